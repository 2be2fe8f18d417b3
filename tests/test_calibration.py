"""The tail model behind per-upload false-match figures and `Match.false_match_probability`:
its arithmetic, its predictions on images it was not fitted on, and the scores a real server
sends."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from hashsvc_client import Client
from hashsvc_client.v1 import types_pb2

from hashsvc.matching.calibration import (
    BETA_BINOMIAL,
    CALIBRATION_PATH,
    Calibration,
    WayModel,
    beta_binomial_log_cdf,
    default_calibration,
    way_of_matching,
)
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from indexer.evaluation.hashing import METHODS, Job, run_job
from indexer.evaluation.tail import (
    FAMILIES,
    WayCounts,
    choose_family,
    collect,
    fit_tail,
    held_out_check,
    log_cdf_grid,
)
from tests.conftest import IMAGES, PHOTOS
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ


def test_beta_binomial_cdf_equals_the_sum_of_its_probabilities() -> None:
    bits, alpha, beta = 64, 7.5, 6.0
    pmf = [math.comb(bits, k) * math.exp(math.lgamma(k + alpha) + math.lgamma(bits - k + beta)
                                         - math.lgamma(bits + alpha + beta)
                                         - math.lgamma(alpha) - math.lgamma(beta)
                                         + math.lgamma(alpha + beta)) for k in range(bits + 1)]
    expected = np.log(np.cumsum(pmf))
    assert np.allclose(beta_binomial_log_cdf(bits, alpha, beta), expected, atol=1e-9)
    grid = log_cdf_grid(bits, np.array([alpha, 2.0]), np.array([beta, 2.0]))
    assert np.allclose(grid[0], expected, atol=1e-9)


def test_the_tail_fit_recovers_a_known_distribution_below_what_it_saw() -> None:
    """Counts drawn from a known beta-binomial: fitted on the tail down to ~1e-5, the fit's
    rate 30 bits further down (~1e-12) is within 10x of the truth."""
    bits, alpha, beta = 256, 60.0, 60.0
    truth = np.exp(beta_binomial_log_cdf(bits, alpha, beta))
    rng = np.random.default_rng(3)
    histogram = rng.multinomial(10**8, np.diff(truth, prepend=0.0)).astype(np.float64)
    fit = fit_tail(histogram)
    predicted = np.exp(fit.log_cdf(bits))
    d = int(np.searchsorted(truth, 1e-12))
    assert truth[d] > 0 and abs(math.log10(predicted[d] / truth[d])) < 1


def test_tail_model_predicts_held_out_pairs() -> None:
    """Fitted on the pairs within one half of 150 real photos, the chosen model predicts the
    counts within the other half at the thresholds that half resolves, within a factor ~3."""
    name = "pdq+dihedral"
    method = next(m for m in METHODS if m.name == name)
    results = [run_job(Job(i, path, (method,), ()))
               for i, path in enumerate(sorted(PHOTOS.iterdir())[:150])]
    assert all(r.error is None for r in results)
    split = np.zeros(len(results), dtype=np.int8)
    split[np.random.default_rng(14).permutation(len(results))[: len(results) // 2]] = 1
    data = collect(
        "pdq", 256,
        [(r.queries[name][0], r.query_kinds[name]) for r in results],
        list(range(len(results))),
        [(r.stored[name][0], r.stored_kinds[name]) for r in results],
        list(range(len(results))), len(results), split)
    assert set(data.ways) == {"plain", "dihedral"}
    assert data.image_pairs == 150 * 149
    dihedral = data.ways["dihedral"]
    assert int(dihedral.histogram.sum()) == 150 * 149 * 7  # every comparison, once
    family, checks = choose_family(dihedral)
    assert {c.family for c in checks} == set(FAMILIES)
    chosen = held_out_check(dihedral, family)
    assert len(chosen.thresholds) >= 3 and min(chosen.observed) >= 5
    assert chosen.error < 0.5, (chosen.thresholds, chosen.predicted, chosen.observed)


def test_the_held_out_check_picks_the_family_that_predicts_a_clumped_tail() -> None:
    """Unrelated photos of similar compositions (one backdrop, one garment type) make the
    closest distances far more common than a smooth bulk predicts. Drawn from such a mixture
    (a beta-binomial bulk with PDQ's spread plus an exponential tail) and split into halves,
    the check must choose the exponential (log-linear) tail, which predicts the held-out half
    within a factor 3 at every resolved threshold where the bulk fits miss by decades; fitted
    on both halves it extrapolates to 31 bits, ~40 bits below what it saw, within 10x."""
    bits = 256
    d = np.arange(bits + 1)
    bulk = np.exp(beta_binomial_log_cdf(bits, 300.0, 300.0))  # mean 128, sd ~9.5 bits
    truth = np.minimum(bulk + np.exp(-30.0 + 0.2 * d), 1.0)
    rng = np.random.default_rng(7)
    histogram = np.zeros((4, bits + 1), dtype=np.int64)
    histogram[0], histogram[3] = (rng.multinomial(10**8, np.diff(truth, prepend=0.0))
                                  for _ in range(2))
    counts = WayCounts(histogram, np.zeros(0, np.int32), np.zeros(0, np.int32),
                       np.zeros(0, np.int16))
    family, checks = choose_family(counts)
    assert family == "log-linear lower tail"
    by_family = {c.family: c for c in checks}
    chosen = by_family[family]
    assert len(chosen.thresholds) == 6 and min(chosen.observed) >= 5
    assert all(abs(math.log10(p / o)) < 0.5 for p, o in zip(
        chosen.predicted, chosen.observed, strict=True))
    assert by_family["beta-binomial, moments (bulk)"].error > 2
    fit = FAMILIES[family](histogram.sum(axis=0).astype(np.float64))
    assert fit.fit_cut < 90
    assert abs(math.log10(math.exp(fit.log_cdf(bits)[31]) / truth[31])) < 1


def test_way_of_matching_names_every_strategy() -> None:
    assert way_of_matching("identity", False, "") == "plain"
    assert way_of_matching("rotate_90", False, "") == "dihedral"
    assert way_of_matching("rotate_90", True, "") == "trimmed_query"
    assert way_of_matching("identity", False, "trimmed") == "trimmed"
    assert way_of_matching("flip_x", True, "crop_4") == "crop"
    assert way_of_matching("identity", False, "offcrop_3") == "offcrop"  # a new strategy


def test_the_shipped_calibration_is_safe_for_unknown_ways() -> None:
    calibration = Calibration.load(CALIBRATION_PATH)
    pdq = calibration.models["pdq"]
    assert {"plain", "dihedral"} <= set(pdq)
    unknown = calibration.model("pdq", "offcrop")
    assert unknown is not None
    assert unknown.log_cdf[64] == max(m.log_cdf[64] for m in pdq.values())
    assert calibration.false_match_probability("md5", "plain", 0, 10) is None
    model = WayModel(256, BETA_BINOMIAL, 50.0, 50.0, 7.0)
    assert model.false_match_probability(40, 10**7) == pytest.approx(
        -math.expm1(-(10**7) * 7.0 * math.exp(model.log_cdf[40])))


FILLER = 63  # list entries beside the bridge photo: the served list has 64 PDQ entries


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(5)
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("bridge")
        store.add_entries("bridge", [NewEntry("pdq", BRIDGE_PDQ, "bridge-orig")] + [
            NewEntry("pdq", bytes(rng.integers(0, 256, 32, dtype=np.uint8)), f"f{i}")
            for i in range(FILLER)])
        publish(store, home / "snapshots")
    with ServerProcess(home) as process:
        yield process


def test_scores_in_a_grpc_match_are_the_models(server: ServerProcess) -> None:
    """Every dihedral copy of the bridge matches through its own way of matching; each Match
    carries exactly the shipped model's probability for that way, distance and list size."""
    calibration = default_calibration()
    ways = set()
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        for path in sorted((IMAGES / "dih").iterdir()):
            result = client.scan_image(path.read_bytes())
            (match,) = result.matches
            transform = types_pb2.Transform.Name(match.query_transform)
            transform = transform.removeprefix("TRANSFORM_").lower()
            way = way_of_matching(transform, match.query_trimmed, match.entry_variant)
            ways.add(way)
            expected = calibration.false_match_probability("pdq", way, match.distance,
                                                           FILLER + 1)
            assert match.HasField("false_match_probability")
            assert match.false_match_probability == pytest.approx(expected, rel=1e-9)
            assert 0 < match.false_match_probability < 1e-6
    assert ways == {"plain", "dihedral"}


def test_hashscan_prints_the_score(server: ServerProcess) -> None:
    path = sorted((IMAGES / "dih").iterdir())[0]
    result = subprocess.run(
        [sys.executable, "-m", "hashsvc_client.cli", "--server", server.target, "--api-key",
         server.keys["scanner"], str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert '"false_match_probability": ' in result.stdout

