"""`indexer evaluate`: its counts against brute force, its verdicts against the real scanner, and
its outputs through the real console entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashsvc import snapshot as snapshots
from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import DecodeLimits, Upload
from hashsvc.home import DataHome
from hashsvc.matching.calibration import Calibration
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.scanner import Scanner
from hashsvc.store import NewEntry, SqliteStore
from indexer.evaluation.hashing import (
    METHODS,
    NO_MATCH,
    WAY_BITS,
    Job,
    margin_table,
    run_job,
)
from indexer.evaluation.metrics import pair_histogram, recall_curve
from indexer.evaluation.transforms import BY_NAME, SUITE
from tests.conftest import PHOTOS, run_indexer
from tests.test_strategies import _add_files


def test_pair_histogram_equals_brute_force_over_hash_sets() -> None:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (6, 32), dtype=np.uint8)
    plain_and_crop = np.array([0, WAY_BITS["crop"]], dtype=np.uint8)
    stored = [(np.stack([b, b ^ rng.integers(0, 2, 32, dtype=np.uint8)]), plain_and_crop)
              for b in base]
    queries = [(codes[1:] ^ np.uint8(1), np.array([0], dtype=np.uint8)) for codes, _ in stored]
    # a negative, hashed through a strategy (rotated)
    queries.append((base[2:3], np.array([WAY_BITS["dihedral"]], dtype=np.uint8)))
    owners = [0, 1, 2, 3, 4, 5, -1]
    margin, crop_margin = 5, 9
    margins = margin_table(MatchStrategies(variant_margin=margin,
                                           margins=(("crop", crop_margin),)))
    counts = pair_histogram(queries, stored, 256, query_owner=owners, skip_pairs={(1, 4)},
                            margins=margins)
    expected = np.zeros(258, dtype=np.int64)
    expected_ways = {way: np.zeros(258, dtype=np.int64) for way in ("plain", "dihedral", "crop")}
    for (q, q_ways), owner in zip(queries, owners, strict=True):
        for j, (s, s_ways) in enumerate(stored):
            if j == owner or (owner, j) == (1, 4):
                continue
            raw = np.bitwise_count(q[:, None] ^ s[None]).sum(axis=2)
            ways = q_ways[:, None] | s_ways[None, :]
            extra = np.where(ways & WAY_BITS["crop"], crop_margin, np.where(ways, margin, 0))
            expected[int((raw + extra).min())] += 1
            for way, selected in (("plain", ways == 0),
                                  ("dihedral", (ways & WAY_BITS["dihedral"]) != 0),
                                  ("crop", (ways & WAY_BITS["crop"]) != 0)):
                expected_ways[way][int(np.where(selected, raw, 257).min())] += 1
    assert counts.pairs == 6 * 5 - 1 + 6 and counts.histogram.tolist() == expected.tolist()
    assert counts.by_way is not None and set(counts.by_way) == set(expected_ways)
    for way, histogram in expected_ways.items():
        assert counts.by_way[way].tolist() == histogram.tolist(), way
    assert counts.by_way["dihedral"][0] == 1  # the negative is base[2] itself, raw
    assert counts.false_positives(margin) == 1  # and, with the dihedral margin, at `margin`
    assert counts.false_positives(margin - 1) == 0
    assert counts.threshold_for(0.0) == margin - 1 and counts.threshold_for(1.0) == 256
    assert recall_curve([0, 3, 300], 256)[[0, 2, 3, 256]].tolist() == [1 / 3, 1 / 3, 2 / 3, 2 / 3]


def test_every_transform_is_deterministic_and_decodes() -> None:
    path = sorted(PHOTOS.iterdir())[0]
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    for transform in SUITE:
        first = transform.apply(image, 3)
        assert first == transform.apply(image, 3), transform.name
        assert Upload(first).decoded.width >= 8


@pytest.mark.parametrize("method_name", ["hashsvc", "hashsvc-ways", "hashonly"])
def test_evaluation_verdicts_equal_the_scanners(home: DataHome, method_name: str) -> None:
    """Each strategy method's distances decide exactly what a real scan of a published
    snapshot reports at the default threshold: same code path, not a re-implementation. The
    hash-only method is a bank of plain hashes (an imported list) with query-side strategies."""
    originals = sorted(PHOTOS.iterdir())[:4]
    names = ("pad_20", "crop_5", "rotate_90", "letterbox_20", "crop_5_offcentre", "blur")
    method = next(m for m in METHODS if m.name == method_name)
    with SqliteStore(home.store_path) as store:
        store.create_bank("known", strategies=method.strategies)
        if method.hash_only:
            store.add_entries("known", [NewEntry("pdq", PDQ.compute(Upload(
                p.read_bytes())).value, p.name) for p in originals])
        else:
            _add_files(store, "known", originals)
        snapshots.publish(store, home.snapshots_dir)
    scanner = Scanner(snapshots.load_current(home.snapshots_dir))
    verdicts = []
    for index, path in enumerate(originals):
        result = run_job(Job(index, path, (method,), names))
        assert result.error is None
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        for name in names:
            scan = scanner.scan_image(BY_NAME[name].apply(image, index))
            found = [m for m in scan.matches if m.external_id == path.name]
            evaluated = result.distances[name][method_name]  # effective: margin included
            assert (evaluated <= 31) == bool(found), (path.name, name)
            if found:
                (match,) = found
                margin = method.strategies.margin_for(
                    rotated=match.query_transform != "identity", trimmed=match.query_trimmed,
                    variant=match.entry_variant)
                assert match.distance + margin >= evaluated
            verdicts.append(bool(found))
    assert any(verdicts) and not all(verdicts)  # both outcomes were exercised


def test_evaluate_command_writes_the_report(tmp_path: Path, home: DataHome) -> None:
    originals = tmp_path / "originals"
    originals.mkdir()
    for path in sorted(PHOTOS.iterdir())[:12]:
        shutil.copy(path, originals / path.name)
    shutil.copy(originals / sorted(p.name for p in originals.iterdir())[0],
                originals / "zz-duplicate.jpg")  # byte-identical: not a distinct pair
    out = tmp_path / "out"
    calibration = tmp_path / "calibration.json"
    result = run_indexer(home, "evaluate", str(originals), "--transformed", "3", "--transforms",
                         "jpeg_q90,pad_20,rotate_90,crop_5", "--out", str(out), "--workers", "2",
                         "--list-size", "1000", "--write-calibration", str(calibration),
                         check=True)
    assert "13 originals" in result.stderr
    assert "154 pairs cannot resolve a false-positive rate of 1e-06" in result.stderr
    summary = json.loads((out / "results.json").read_text())
    assert summary["pairs"] == 13 * 12 - 2 and len(summary["duplicates_skipped"]) == 1
    methods = summary["methods"]
    assert set(methods) == {m.name for m in METHODS}
    assert methods["pdq"]["false_positives_at_default"] == 0
    point = summary["operating_point"]
    assert point["list_size"] == 1000 and point["target_per_upload"] == 1e-6
    hashsvc_point = point["methods"]["hashsvc"]
    assert set(hashsvc_point["comparisons_per_entry"]) >= {"plain", "dihedral", "crop"}
    per_upload = hashsvc_point["per_upload_upper"]
    assert per_upload == sorted(per_upload) and per_upload[-1] > 1e-6
    assert point["algorithms"]["pdq"]["image_pairs"] == 13 * 12 - 2
    # the model the server would load: every algorithm, and the plain way of each
    model = Calibration.load(calibration)
    assert {"pdq", "phash", "dhash"} <= set(model.models)
    assert all("plain" in ways for ways in model.models.values())
    recall = {name: row["recall_at_default"] for name, row in summary["transforms"].items()}
    curve = summary["transforms"]["pad_20"]["recall_by_threshold"]["hashsvc"]
    assert len(curve) == 65 and curve == sorted(curve)
    assert curve[31] == pytest.approx(recall["pad_20"]["hashsvc"], abs=1e-4)
    assert recall["jpeg_q90"]["pdq"] == 1.0
    assert recall["rotate_90"]["pdq"] == 0.0 and recall["rotate_90"]["pdq+dihedral"] == 1.0
    assert recall["pad_20"]["pdq"] == 0.0 and recall["pad_20"]["hashsvc"] >= 2 / 3
    report = (out / "report.md").read_text()
    assert "## Operating point: false matches per upload against 1,000 entries" in report
    assert "**Warning:** 154 pairs cannot resolve" in report
    assert "| pad_20 | 1.3% |" in report  # Thorn's figure beside ours
    for plot in ("recall_vs_fpr.png", "recall_by_group.png", "recall_by_transform.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
        assert f"]({plot})" in report


@pytest.mark.parametrize(("args", "message"), [
    (["--target-fpr", "2"], "--target-fpr must be between 0 and 1"),
    (["--transforms", "jpeg_q90,swirl"], "unknown transform(s) swirl"),
    (["--methods", "sift"], "unknown method(s) sift"),
])
def test_evaluate_refuses_bad_arguments(home: DataHome, args: list[str], message: str) -> None:
    result = run_indexer(home, "evaluate", str(PHOTOS), *args)
    assert result.returncode != 0 and message in result.stderr


def test_a_copy_over_a_decode_cap_is_a_miss_and_keeps_its_original() -> None:
    """A copy a scan would refuse (here resize_2.0x over a pixel cap) is a miss; the original
    is still evaluated, so it stays in recall and in the false-positive pairs."""
    path = sorted(PHOTOS.iterdir())[0]
    with Image.open(path) as opened:
        pixels = opened.width * opened.height
    limits = DecodeLimits(max_pixels=2 * pixels, max_full_decode_pixels=2 * pixels)
    pdq = next(m for m in METHODS if m.name == "pdq")
    result = run_job(Job(0, path, (pdq,), ("jpeg_q90", "resize_2.0x"), limits=limits))
    assert result.error is None and pdq.name in result.stored and pdq.name in result.queries
    assert result.distances["resize_2.0x"] == {"pdq": NO_MATCH}
    assert result.distances["jpeg_q90"]["pdq"] <= pdq.threshold
    (refused,) = result.refused
    assert "resize_2.0x" in refused
