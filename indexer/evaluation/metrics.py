"""Recall and false-positive rate from hashed originals, per method and threshold.

False positives: every ordered pair (query image, known image) of distinct originals (plus every
negative against every original) counts once, as a match if any of the query's hashes is within
the threshold of any of the known image's stored hashes — what a scan of that image against a
bank holding the other would report. The closest distance of each pair is histogrammed, so the
rate at every threshold comes from one pass.

Per way of matching (`WAY_BITS`), the same histogram is also kept over only the hash pairs that
involve that way (raw Hamming distance, no margin), and over the plain pairs: how close each
way brings unrelated images, i.e. what each way costs in false matches, so that its margin can
be set from its own cost.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.evaluation.hashing import NO_MATCH, WAY_BITS, Codes, HashSet, Ways

Histogram = npt.NDArray[np.int64]  # [d] = number of pairs whose closest distance is d
_BLOCK_ROWS = 256  # query rows per block: bounds the XOR buffer to ~200 MB at 3,000 originals


PLAIN_WAY = "plain"


@dataclass(frozen=True)
class PairCounts:
    histogram: Histogram  # length bits + 2; the last bin holds pairs with nothing to compare
    pairs: int
    # way (or "plain") -> the same over the hash pairs through that way only, raw distance;
    # a way no hash uses is left out
    by_way: dict[str, Histogram] | None = None

    def false_positives(self, threshold: int) -> int:
        return int(self.histogram[: threshold + 1].sum())

    def rate(self, threshold: int) -> float:
        return self.false_positives(threshold) / self.pairs if self.pairs else 0.0

    def threshold_for(self, target_rate: float) -> int:
        """The largest threshold whose false-positive rate stays at or below the target."""
        allowed = target_rate * self.pairs
        cumulative = np.cumsum(self.histogram[:-1])
        within = np.flatnonzero(cumulative <= allowed)
        return int(within[-1]) if len(within) else -1


def pair_histogram(
    queries: Sequence[HashSet], stored: Sequence[HashSet], bits: int, *,
    query_owner: Sequence[int], skip_pairs: Collection[tuple[int, int]] = (),
    margins: npt.NDArray[np.int64] | None = None,
) -> PairCounts:
    """Closest effective distance of every (query image, stored image) pair with different
    owners (Hamming distance, plus the margin of the ways the two hashes involve: see
    `closest`), and per way the closest raw distance through it (`PairCounts.by_way`).

    `queries[i]` is the hash set of query image i, which is original `query_owner[i]` (an
    owner of len(stored) or more, or -1, is a negative); `stored[j]` is original j's stored
    set. `skip_pairs` holds (owner, j) pairs to leave out (duplicates: not distinct images).
    """
    histogram = np.zeros(bits + 2, dtype=np.int64)
    stored_rows, stored_starts = _stack([codes for codes, _ in stored])
    if len(stored_rows) == 0:
        return PairCounts(histogram, 0)
    stored_words = _words(stored_rows)
    stored_ways = np.concatenate([ways for _, ways in stored])
    used = int(np.bitwise_or.reduce(stored_ways)) | int(np.bitwise_or.reduce(
        np.concatenate([ways for _, ways in queries]))) if queries else 0
    way_bits = {PLAIN_WAY: 0, **{w: b for w, b in WAY_BITS.items() if used & b}}
    by_way = {way: np.zeros(bits + 2, dtype=np.int64) for way in way_bits}
    pairs = 0
    query_index = 0
    while query_index < len(queries):
        block: list[HashSet] = []
        rows = 0
        first = query_index
        while query_index < len(queries) and (rows < _BLOCK_ROWS or not block):
            block.append(queries[query_index])
            rows += len(queries[query_index][0])
            query_index += 1
        closest = _block_closest(block, stored_words, stored_ways, stored_starts, len(stored),
                                 bits, margins, way_bits)
        for offset in range(len(block)):
            owner = query_owner[first + offset]
            keep = np.ones(len(stored), dtype=bool)
            if 0 <= owner < len(stored):
                keep[owner] = False
            for a, b in skip_pairs:
                if a == owner:
                    keep[b] = False
            for name, per_pair in closest.items():
                row = per_pair[offset][keep]
                counts = np.bincount(np.minimum(row, bits + 1), minlength=bits + 2)
                if name is None:
                    histogram += counts
                else:
                    by_way[name] += counts
            pairs += int(keep.sum())
    return PairCounts(histogram, pairs, by_way)


def _block_closest(
    block: list[HashSet], stored_words: npt.NDArray[np.uint64], stored_ways: Ways,
    stored_starts: npt.NDArray[np.intp], stored_count: int, bits: int,
    margins: npt.NDArray[np.int64] | None, way_bits: dict[str, int],
) -> dict[str | None, npt.NDArray[np.int64]]:
    """(len(block), stored_count) closest distances, effective under the key None and raw per
    way; bits + 1 where a query set (or a way's part of it) is empty."""
    keys: list[str | None] = [None, *way_bits]
    result = {key: np.full((len(block), stored_count), bits + 1, dtype=np.int64)
              for key in keys}
    nonempty = [i for i, (codes, _) in enumerate(block) if len(codes)]
    if not nonempty:
        return result
    rows, starts = _stack([block[i][0] for i in nonempty])
    query_ways = np.concatenate([block[i][1] for i in nonempty])
    words = _words(rows)
    distances = np.zeros((len(words), len(stored_words)), dtype=np.int64)
    for w in range(words.shape[1]):
        distances += np.bitwise_count(words[:, w, None] ^ stored_words[None, :, w])
    ways = query_ways[:, None] | stored_ways[None, :]
    for name, bit in way_bits.items():
        through = (ways == 0) if bit == 0 else (ways & bit) != 0
        result[name][nonempty] = _per_pair(np.where(through, distances, bits + 1), starts,
                                           stored_starts, bits)
    if margins is not None:
        distances += margins[ways]
    result[None][nonempty] = _per_pair(distances, starts, stored_starts, bits)
    return result


def _per_pair(distances: npt.NDArray[np.int64], starts: npt.NDArray[np.intp],
              stored_starts: npt.NDArray[np.intp], bits: int) -> npt.NDArray[np.int64]:
    per_query = np.minimum.reduceat(distances, starts, axis=0)
    return np.minimum(np.minimum.reduceat(per_query, stored_starts, axis=1), bits + 1)


def _stack(sets: Sequence[Codes]) -> tuple[Codes, npt.NDArray[np.intp]]:
    """All sets' rows in one array, and where each set starts (empty sets must be excluded
    by the caller for queries; for stored sets an empty set gets no columns)."""
    nonempty = [s for s in sets if len(s)]
    if not nonempty:
        return np.zeros((0, 0), dtype=np.uint8), np.zeros(0, dtype=np.intp)
    if len(nonempty) != len(sets):
        raise ValueError("every stored image needs at least one hash")
    sizes = np.array([len(s) for s in sets])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return np.concatenate(list(sets)), starts


def _words(rows: Codes) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(rows).view(">u8").astype(np.uint64)


def recall_curve(distances: Sequence[int], bits: int) -> npt.NDArray[np.float64]:
    """[t] = share of copies whose closest distance is at most t, for t in 0..bits."""
    values = np.minimum(np.asarray(distances, dtype=np.int64), bits + 1)
    if len(values) == 0:
        return np.zeros(bits + 1)
    counts = np.bincount(values, minlength=bits + 2)[: bits + 1]
    return np.cumsum(counts) / len(values)


__all__ = ["NO_MATCH", "PairCounts", "pair_histogram", "recall_curve"]
