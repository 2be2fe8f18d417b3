"""The tail model: distances between unrelated images, per algorithm and way of matching.

Why: a platform's false alarms per upload are N·Σ k·F(t) against a list of N entries (k hash
comparisons per entry through each way of matching, F the per-comparison probability of a
distance <= t). At N = 10M and one false alarm per million uploads, F must be ~1e-13, which
no set of images resolves, so F's lower tail is fitted and extrapolated
(`hashsvc.matching.calibration` holds the family and how a match is scored).

Every hash comparison between distinct images is counted once per way of matching (plain,
dihedral, trimmed, crop variant, ...), so a pair of images contributes up to ~100 comparisons
(8 dihedral queries, 8 trimmed ones, 7 stored hashes). Pairs share images, so counts are not
independent: the uncertainty comes from a bootstrap over *images* (each image drawn with
Poisson(1) weight, every comparison weighted by the product of its two images' weights), and
the model is checked on images it was not fitted on (fit on the pairs within one half of the
images, predict the counts within the other half at thresholds that half still resolves).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.matching.calibration import (
    BETA_BINOMIAL,
    LOG_LINEAR,
    PLAIN,
    WayModel,
    way_of_matching,
)
from indexer.evaluation.hashing import Codes

QueryKind = tuple[str, bool]  # (dihedral transform, trimmed)
TAIL_SHARE = 0.375  # comparisons closer than this share of the bits are kept one by one
FIT_RATE = 1e-3  # the fit sees the tail up to where the empirical CDF reaches this rate
MIN_TAIL_COUNT = 5  # the log-linear fit starts at the first distance with this many below
# ... and ends at the first with this many: the lowest two decades the data resolves. Fitted
# further up, the line takes the steeper slope of the bulk's shoulder and under-predicts the far
# tail: drawn from a known bulk + exponential mixture (tests/test_calibration.py), 2e8
# comparisons, at 31 bits by 40x fitted up to FIT_RATE, by 4x ended here. With 1e7 (the plain
# way's count on photos-cc0) the exponential part is not yet resolved above the bulk and even
# this fit under-predicts it ~70x: the held-out check cannot see that, it is a limit.
LOG_LINEAR_TOP = 100
BOOTSTRAPS = 40
_BLOCK_ROWS = 192
_SEED = 14


@dataclass
class WayCounts:
    """One way of matching's comparisons between distinct images."""

    histogram: npt.NDArray[np.int64]  # [split class, d]: classes 0 = A×A, 3 = B×B, 1/2 mixed
    # Every comparison with d <= tail_cut, one by one (query image, stored image, distance)
    tail_query: npt.NDArray[np.int32]
    tail_stored: npt.NDArray[np.int32]
    tail_distance: npt.NDArray[np.int16]


@dataclass
class TailData:
    algorithm: str
    bits: int
    tail_cut: int
    images: int  # distinct images (query-only negatives included)
    image_pairs: int
    ways: dict[str, WayCounts]
    # Per image, how many query / stored hashes of each kind: the bootstrap's comparison totals
    query_kind_counts: npt.NDArray[np.int64]  # (images, query kinds)
    stored_kind_counts: npt.NDArray[np.int64]  # (images, stored kinds)
    way_of_kinds: npt.NDArray[np.int64]  # (query kinds, stored kinds) -> way index
    way_names: list[str]


def collect(
    algorithm: str, bits: int,
    queries: Sequence[tuple[Codes, list[QueryKind]]], query_image: Sequence[int],
    stored: Sequence[tuple[Codes, list[str]]], stored_image: Sequence[int],
    images: int, split: npt.NDArray[np.int8],
    skip_pairs: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> TailData:
    """Count every comparison of a query hash with a stored hash of a different image.

    `query_image[i]` / `stored_image[j]` name the image (0..images-1) that query set i / stored
    set j belongs to; `split[image]` is 0 or 1 (the held-out check's halves); `skip_pairs`
    holds (query image, stored image) pairs that are not distinct images (byte duplicates)."""
    query_kinds = sorted({k for _, kinds in queries for k in kinds})
    stored_kinds = sorted({k for _, kinds in stored for k in kinds})
    way_names = sorted({way_of_matching(t, trimmed, v)
                        for t, trimmed in query_kinds for v in stored_kinds},
                       key=lambda w: (w != PLAIN, w))
    way_of_kinds = np.array([[way_names.index(way_of_matching(t, trimmed, v))
                              for v in stored_kinds] for t, trimmed in query_kinds],
                            dtype=np.int64).reshape(len(query_kinds), len(stored_kinds))
    q_rows, q_img, q_kind = _flatten(queries, query_image, {k: i for i, k in
                                                           enumerate(query_kinds)})
    s_rows, s_img, s_kind = _flatten(stored, stored_image, {k: i for i, k in
                                                           enumerate(stored_kinds)})
    q_counts = np.zeros((images, len(query_kinds)), dtype=np.int64)
    np.add.at(q_counts, (q_img, q_kind), 1)
    s_counts = np.zeros((images, len(stored_kinds)), dtype=np.int64)
    np.add.at(s_counts, (s_img, s_kind), 1)
    n_ways = len(way_names)
    tail_cut = int(bits * TAIL_SHARE)
    histogram = np.zeros(4 * n_ways * (bits + 1), dtype=np.int64)
    tails: list[tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int16],
                      npt.NDArray[np.int64]]] = []
    s_words = _words(s_rows)
    s_split = split[s_img].astype(np.int64)
    skip = np.array(sorted(skip_pairs), dtype=np.int64).reshape(-1, 2)
    for start in range(0, len(q_rows), _BLOCK_ROWS):
        words = _words(q_rows[start:start + _BLOCK_ROWS])
        rows_img = q_img[start:start + _BLOCK_ROWS]
        distance = np.zeros((len(words), len(s_words)), dtype=np.int64)
        for w in range(words.shape[1]):
            distance += np.bitwise_count(words[:, w, None] ^ s_words[None, :, w])
        keep = rows_img[:, None] != s_img[None, :]
        for a, b in skip:
            keep &= ~((rows_img[:, None] == a) & (s_img[None, :] == b))
        way = way_of_kinds[q_kind[start:start + _BLOCK_ROWS][:, None], s_kind[None, :]]
        split_class = split[rows_img].astype(np.int64)[:, None] * 2 + s_split[None, :]
        index = ((split_class * n_ways + way) * (bits + 1) + distance)[keep]
        histogram += np.bincount(index, minlength=len(histogram))
        close = keep & (distance <= tail_cut)
        r, c = np.nonzero(close)
        tails.append((rows_img[r].astype(np.int32), s_img[c].astype(np.int32),
                      distance[r, c].astype(np.int16), way[r, c]))
    by_class = histogram.reshape(4, n_ways, bits + 1)
    tq = np.concatenate([t[0] for t in tails]) if tails else np.zeros(0, np.int32)
    ts = np.concatenate([t[1] for t in tails]) if tails else np.zeros(0, np.int32)
    td = np.concatenate([t[2] for t in tails]) if tails else np.zeros(0, np.int16)
    tw = np.concatenate([t[3] for t in tails]) if tails else np.zeros(0, np.int64)
    ways = {name: WayCounts(by_class[:, i, :].copy(), tq[tw == i], ts[tw == i], td[tw == i])
            for i, name in enumerate(way_names)}
    query_images = set(query_image)
    stored_images = set(stored_image)
    image_pairs = len(query_images) * len(stored_images) - len(query_images & stored_images) \
        - len(skip_pairs)
    return TailData(algorithm, bits, tail_cut, images, image_pairs, ways, q_counts, s_counts,
                    way_of_kinds, way_names)


def comparisons_per_entry(
    query_kinds: Sequence[list[QueryKind]], stored_kinds: Sequence[list[str]]
) -> dict[str, float]:
    """Way of matching -> mean hash comparisons per (upload, list entry): the mean number of
    query hashes of each kind times the mean number of stored hashes of each kind."""
    per_query: dict[QueryKind, float] = {}
    for kinds in query_kinds:
        for kind in kinds:
            per_query[kind] = per_query.get(kind, 0) + 1 / len(query_kinds)
    per_stored: dict[str, float] = {}
    for variants in stored_kinds:
        for variant in variants:
            per_stored[variant] = per_stored.get(variant, 0) + 1 / len(stored_kinds)
    ways: dict[str, float] = {}
    for (transform, trimmed), q in per_query.items():
        for variant, s in per_stored.items():
            way = way_of_matching(transform, trimmed, variant)
            ways[way] = ways.get(way, 0.0) + q * s
    return ways


def _flatten(
    sets: Sequence[tuple[Codes, Sequence[Hashable]]], owners: Sequence[int],
    vocabulary: Mapping[Any, int],
) -> tuple[Codes, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    nonempty = [(codes, kinds, owner) for (codes, kinds), owner in zip(sets, owners, strict=True)
                if len(codes)]
    if not nonempty:
        return np.zeros((0, 32), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate([codes for codes, _, _ in nonempty])
    image = np.concatenate([np.full(len(codes), owner, dtype=np.int64)
                            for codes, _, owner in nonempty])
    kind = np.array([vocabulary[k] for _, kinds, _ in nonempty for k in kinds], dtype=np.int64)
    return rows, image, kind


def _words(rows: Codes) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(rows).view(">u8").astype(np.uint64)


# --- the model: a beta-binomial fitted to the lower tail by censored maximum likelihood ------


def log_cdf_grid(bits: int, alpha: npt.NDArray[np.float64],
                 beta: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(len(alpha), bits + 1): log P(D <= d) for each (alpha, beta), D ~ BetaBinomial(bits)."""
    a, b = alpha[:, None], beta[:, None]
    k = np.arange(bits, dtype=np.float64)[None, :]
    log_ratio = np.log((bits - k) / (k + 1)) + np.log((k + a) / (bits - k - 1 + b))
    first = np.array([_log_beta(x, bits + y) - _log_beta(x, y) for x, y in zip(
        alpha.tolist(), beta.tolist(), strict=True)])[:, None]
    log_pmf = np.concatenate([first, first + np.cumsum(log_ratio, axis=1)], axis=1)
    return np.minimum(np.logaddexp.accumulate(log_pmf, axis=1), 0.0)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass(frozen=True)
class Fit:
    """A fitted family (`hashsvc.matching.calibration.WayModel` evaluates the same two)."""

    family: str  # BETA_BINOMIAL: a, b = alpha, beta; LOG_LINEAR: ln F(d) = a + b·d
    a: float
    b: float
    fit_cut: int  # the distances the fit saw one by one (the rest only as a total)

    def log_cdf(self, bits: int) -> npt.NDArray[np.float64]:
        return np.array(WayModel(bits, self.family, self.a, self.b, 1.0).log_cdf)


def fit_moments(histogram: npt.NDArray[np.float64], fit_cut: int | None = None,
                start: Fit | None = None) -> Fit:
    """The bulk fit (the family's method of moments): the baseline the tail fit must beat.
    With `fit_cut` (a resample whose comparisons beyond it are pooled) it keeps `start`."""
    if fit_cut is not None and start is not None:
        return start
    bits = len(histogram) - 1
    d = np.arange(bits + 1)
    total = histogram.sum()
    mean = float((histogram * d).sum() / total)
    var = float((histogram * (d - mean) ** 2).sum() / total)
    p = mean / bits
    rho = max((var / (bits * p * (1 - p)) - 1) / (bits - 1), 1e-6)
    size = (1 - rho) / rho
    return Fit(BETA_BINOMIAL, p * size, (1 - p) * size, bits)


def fit_tail(histogram: npt.NDArray[np.float64], fit_cut: int | None = None,
             start: Fit | None = None) -> Fit:
    """Censored maximum likelihood: the counts at d <= fit_cut one by one, the rest as one bin,
    so the tail's shape drives the fit and the bulk only its total. A coarse grid over (mean
    rate, alpha + beta), then a finer one around the best point."""
    bits = len(histogram) - 1
    total = histogram.sum()
    if fit_cut is None:
        cumulative = np.cumsum(histogram) / total
        fit_cut = int(np.searchsorted(cumulative, FIT_RATE))
    start = start or fit_moments(histogram)
    if start.family != BETA_BINOMIAL:
        start = fit_moments(histogram)
    p0 = start.a / (start.a + start.b)
    centre_p, centre_log_size = p0, math.log10(start.a + start.b)
    span_p, span_size = 0.15, 2.0
    best = start
    for _ in range(3):
        ps = centre_p * (1 + np.linspace(-span_p, span_p, 25))
        sizes = 10 ** (centre_log_size + np.linspace(-span_size, span_size, 25))
        grid_p, grid_size = (g.ravel() for g in np.meshgrid(ps, sizes))
        grid_p = np.clip(grid_p, 1e-3, 1 - 1e-3)
        logs = log_cdf_grid(bits, grid_p * grid_size, (1 - grid_p) * grid_size)
        log_pmf = np.concatenate([logs[:, :1], np.log(np.maximum(
            np.exp(logs[:, 1: fit_cut + 1]) - np.exp(logs[:, : fit_cut]), 1e-300))], axis=1)
        rest = np.log(np.maximum(-np.expm1(logs[:, fit_cut]), 1e-300))
        likelihood = (log_pmf * histogram[: fit_cut + 1][None, :]).sum(axis=1) \
            + rest * histogram[fit_cut + 1:].sum()
        i = int(np.argmax(likelihood))
        best = Fit(BETA_BINOMIAL, float(grid_p[i] * grid_size[i]),
                   float((1 - grid_p[i]) * grid_size[i]), fit_cut)
        centre_p, centre_log_size = float(grid_p[i]), math.log10(float(grid_size[i]))
        span_p, span_size = span_p / 5, span_size / 5
    return best


def fit_log_linear(histogram: npt.NDArray[np.float64], fit_cut: int | None = None,
                   start: Fit | None = None) -> Fit:
    """A straight line through the log of the empirical lower CDF, from the first distance
    with `MIN_TAIL_COUNT` comparisons to the first with `LOG_LINEAR_TOP` (at most `fit_cut`),
    extrapolated below: an exponential tail, heavier than the beta-binomial's, so clusters of
    similar images (which make the lowest distances more common than any smooth bulk
    predicts) are not extrapolated away."""
    del start
    total = histogram.sum()
    cumulative = np.cumsum(histogram)
    if fit_cut is None:
        fit_cut = int(np.searchsorted(cumulative / total, FIT_RATE))
    fit_cut = min(fit_cut, int(np.searchsorted(cumulative, LOG_LINEAR_TOP)))
    low = int(np.searchsorted(cumulative, MIN_TAIL_COUNT))
    low = min(low, max(fit_cut - 2, 0))
    d = np.arange(low, fit_cut + 1)
    y = np.log(np.maximum(cumulative[low: fit_cut + 1], 0.5) / total)
    slope, intercept = np.polyfit(d, y, 1) if len(d) >= 2 else (1.0, float(y[0]) - low)
    return Fit(LOG_LINEAR, float(intercept), max(float(slope), 1e-3), fit_cut)


FAMILIES: dict[str, Callable[..., Fit]] = {"beta-binomial, moments (bulk)": fit_moments,
                                           "beta-binomial, censored tail MLE": fit_tail,
                                           "log-linear lower tail": fit_log_linear}


@dataclass(frozen=True)
class Check:
    """Fit on one half of the images, predicted against observed counts in the other half."""

    family: str
    thresholds: list[int]
    predicted: list[float]
    observed: list[int]
    comparisons: int  # comparisons in the held-out half

    @property
    def error(self) -> float:
        """Mean |log10(predicted / observed)| over the checked thresholds."""
        pairs = [(p, o) for p, o in zip(self.predicted, self.observed, strict=True) if o > 0]
        if not pairs:
            return math.inf
        return float(np.mean([abs(math.log10(max(p, 1e-300) / o)) for p, o in pairs]))


def held_out_check(counts: WayCounts, family: str, min_count: int = 5,
                   thresholds: int = 6) -> Check:
    """Fit on the A×A comparisons; predict B×B counts at the lowest `thresholds` distances
    whose B×B count is at least `min_count` (the smallest rates the held-out data resolves)."""
    train = counts.histogram[0].astype(np.float64)
    test = counts.histogram[3]
    if train.sum() == 0 or test.sum() == 0:
        return Check(family, [], [], [], int(test.sum()))
    fit = FAMILIES[family](train)
    bits = len(train) - 1
    cdf = np.exp(fit.log_cdf(bits))
    cumulative = np.cumsum(test)
    resolved = np.flatnonzero(cumulative >= min_count)[:thresholds]
    return Check(family, resolved.tolist(), [float(cdf[d] * test.sum()) for d in resolved],
                 [int(cumulative[d]) for d in resolved], int(test.sum()))


def choose_family(counts: WayCounts) -> tuple[str, list[Check]]:
    checks = [held_out_check(counts, family) for family in FAMILIES]
    best = min(checks, key=lambda c: c.error)
    return best.family, checks


def bootstrap_log_cdf(data: TailData, way: str, family: str,
                      replicates: int = BOOTSTRAPS) -> npt.NDArray[np.float64]:
    """(replicates, bits + 1) log CDFs, each fitted on a resample of the images."""
    counts = data.ways[way]
    index = data.way_names.index(way)
    rng = np.random.default_rng(_SEED)
    bits = data.bits
    full = counts.histogram.sum(axis=0).astype(np.float64)
    cumulative = np.cumsum(full) / full.sum()
    fit_cut = min(data.tail_cut, int(np.searchsorted(cumulative, FIT_RATE)))
    kinds = data.way_of_kinds == index
    start = FAMILIES[family](full)
    out = []
    for _ in range(replicates):
        weight = rng.poisson(1.0, data.images).astype(np.float64)
        tail = np.bincount(counts.tail_distance.astype(np.int64),
                           weights=weight[counts.tail_query] * weight[counts.tail_stored],
                           minlength=bits + 1)[: bits + 1]
        per_query = weight @ data.query_kind_counts  # weighted hashes per query kind
        per_stored = weight @ data.stored_kind_counts
        same = (weight ** 2) @ (data.query_kind_counts[:, :, None]
                                * data.stored_kind_counts[:, None, :]).reshape(data.images, -1)
        totals = np.outer(per_query, per_stored) - same.reshape(kinds.shape)
        total = float(totals[kinds].sum())
        histogram = tail.copy()
        histogram[fit_cut + 1:] = 0
        histogram[-1] = max(total - histogram[: fit_cut + 1].sum(), 0.0)
        out.append(FAMILIES[family](histogram, fit_cut, start).log_cdf(bits))
    return np.array(out)
