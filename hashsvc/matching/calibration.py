"""How likely a match is to be false: a tail model of the distances between unrelated images.

Why a model and not a count: an upload is compared with every entry of a list, so against ten
million entries a false-alarm budget of one per million uploads allows ~1e-13 per hash pair,
far below what any set of benign images can measure (3,000 photos give ~1e7 pairs). The lower
tail of the distance distribution between unrelated images is therefore fitted (by
`indexer evaluate --write-calibration`, `indexer.evaluation.tail`) and extrapolated, per
algorithm and per *way of matching*: a rotated upload, a trimmed one, or a stored crop of a
known image each compare different hashes with different distance distributions.

Two families are fitted and the one that predicts held-out images best is kept, per way: the
beta-binomial (bit disagreements between two unrelated hashes, with the per-pair disagreement
rate itself varying between pairs, as hashes of similar compositions agree more; a plain
binomial misses the tail by many orders of magnitude) and a log-linear lower tail (an
exponential tail through the empirical CDF, heavier than the beta-binomial's). The parameters,
and how many hash comparisons each way of matching makes per list entry and upload, live in a
small checked-in file (`calibration.json`, beside this module).

A `Match`'s `false_match_probability` is the chance that an upload unrelated to every entry of
a list of the served size would produce a match at least this close through the same way of
matching: 1 - exp(-N·k·F(d)), with N the list's entries, k the comparisons per entry and F the
tail model's per-comparison probability of a distance ≤ d. It is not a posterior (that would
need the share of uploads that really are known images), and it is only as good as the
extrapolation: `docs/evaluation/report.md` states the held-out check and its uncertainty.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.matching.strategies import variant_way

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
IDENTITY = "identity"
# The ways of matching, named as strategies.py names their margins; "plain" is hash to hash.
PLAIN, DIHEDRAL, TRIMMED_QUERY, STORED_TRIMMED, CROP = (
    "plain", "dihedral", "trimmed_query", "trimmed", "crop")
BETA_BINOMIAL, LOG_LINEAR = "beta-binomial", "log-linear"


def way_of_matching(query_transform: str, query_trimmed: bool, entry_variant: str) -> str:
    """The way a query hash met a stored hash, the stored side first: `crop` (a stored centred
    crop), `trimmed` (the known image's trimmed hash), `trimmed_query` (the upload's borders cut
    away), `dihedral` (a rotated/flipped upload) or `plain`. A stored variant this module does
    not know gets its name without its parameter (`offcrop_3` -> `offcrop`), so a new strategy
    gets its own model (or, until it has one, the most permissive: `Calibration.model`)."""
    if entry_variant:
        known = variant_way(entry_variant)  # the margins' names: rotate_-3 -> rotation
        if known is not None:
            return known
        return entry_variant.rsplit("_", 1)[0] if "_" in entry_variant else entry_variant
    if query_trimmed:
        return TRIMMED_QUERY
    return PLAIN if query_transform == IDENTITY else DIHEDRAL


def beta_binomial_log_cdf(bits: int, alpha: float, beta: float) -> list[float]:
    """[d] = natural log of P(D <= d) for D ~ BetaBinomial(bits, alpha, beta), d = 0..bits."""
    log_norm = _log_beta(alpha, beta)
    log_pmf = [
        math.lgamma(bits + 1) - math.lgamma(k + 1) - math.lgamma(bits - k + 1)
        + _log_beta(k + alpha, bits - k + beta) - log_norm
        for k in range(bits + 1)
    ]
    out: list[float] = []
    running = -math.inf
    for value in log_pmf:
        running = _log_add(running, value)
        out.append(min(0.0, running))
    return out


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


@dataclass(frozen=True)
class WayModel:
    """The tail model of one algorithm's distances through one way of matching: `family`
    beta-binomial (a, b = alpha, beta) or log-linear (ln P(D <= d) = a + b·d, capped at 0)."""

    bits: int
    family: str
    a: float
    b: float
    comparisons_per_entry: float  # hash comparisons of this way per list entry and upload

    def __post_init__(self) -> None:
        if self.family not in (BETA_BINOMIAL, LOG_LINEAR):
            raise HashsvcError(f"unknown tail model family {self.family!r}")

    @property
    def log_cdf(self) -> list[float]:
        return _cached_log_cdf(self.bits, self.family, self.a, self.b)

    def pair_probability(self, distance: int) -> float:
        """P(distance <= `distance`) for one comparison of unrelated images' hashes."""
        if distance < 0:
            return 0.0
        return math.exp(self.log_cdf[min(distance, self.bits)])

    def expected_false_matches(self, distance: int, list_size: int) -> float:
        """Expected matches at or below `distance` per unrelated upload, against the list."""
        return list_size * self.comparisons_per_entry * self.pair_probability(distance)

    def false_match_probability(self, distance: int, list_size: int) -> float:
        return -math.expm1(-self.expected_false_matches(distance, list_size))


@cache
def _cached_log_cdf(bits: int, family: str, a: float, b: float) -> list[float]:
    if family == LOG_LINEAR:
        return [min(0.0, a + b * d) for d in range(bits + 1)]
    return beta_binomial_log_cdf(bits, a, b)


@dataclass(frozen=True)
class Calibration:
    """Per algorithm, per way of matching, a `WayModel`; read from `calibration.json`."""

    models: Mapping[str, Mapping[str, WayModel]]

    def model(self, algorithm: str, way: str) -> WayModel | None:
        """The way's model; an unknown way uses the algorithm's most permissive model (the
        one with the largest false-match probability at a quarter of the bits), so a new
        strategy is never scored as safer than the measured ones."""
        by_way = self.models.get(algorithm)
        if not by_way:
            return None
        if way in by_way:
            return by_way[way]
        return max(by_way.values(), key=lambda m: m.log_cdf[m.bits // 4])

    def false_match_probability(
        self, algorithm: str, way: str, distance: int, list_size: int
    ) -> float | None:
        """None for an algorithm without a model (exact hashes: MD5, SHA-256)."""
        model = self.model(algorithm, way)
        if model is None:
            return None
        return model.false_match_probability(distance, list_size)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        try:
            return cls({
                algorithm: {
                    way: WayModel(bits=int(entry["bits"]), family=str(way_data["family"]),
                                  a=float(way_data["a"]), b=float(way_data["b"]),
                                  comparisons_per_entry=float(way_data["comparisons_per_entry"]))
                    for way, way_data in entry["ways"].items()
                }
                for algorithm, entry in data["algorithms"].items()
            })
        except (KeyError, TypeError, ValueError) as err:
            raise HashsvcError(f"calibration data is malformed: {err!r}") from None

    @classmethod
    def load(cls, path: Path = CALIBRATION_PATH) -> Calibration:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise HashsvcError(f"{path}: cannot read the calibration: {err}") from None


@cache
def default_calibration() -> Calibration:
    """The shipped calibration (read once per process)."""
    return Calibration.load()
