"""Recall and false-positive rate from hashed originals, per method and threshold.

False positives: every ordered pair (query image, known image) of distinct originals (plus every
negative against every original) counts once, as a match if any of the query's hashes is within
the threshold of any of the known image's stored hashes — what a scan of that image against a
bank holding the other would report. The closest distance of each pair is histogrammed, so the
rate at every threshold comes from one pass.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.evaluation.hashing import NO_MATCH, Codes

Histogram = npt.NDArray[np.int64]  # [d] = number of pairs whose closest distance is d
_BLOCK_ROWS = 256  # query rows per block: bounds the XOR buffer to ~200 MB at 3,000 originals


@dataclass(frozen=True)
class PairCounts:
    histogram: Histogram  # length bits + 2; the last bin holds pairs with nothing to compare
    pairs: int

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
    queries: Sequence[Codes], stored: Sequence[Codes], bits: int, *,
    query_owner: Sequence[int], skip_pairs: Collection[tuple[int, int]] = (),
) -> PairCounts:
    """Closest distance of every (query image, stored image) pair with different owners.

    `queries[i]` is the hash set of query image i, which is original `query_owner[i]` (or -1
    for a negative); `stored[j]` is original j's stored set. `skip_pairs` holds (owner, j)
    pairs to leave out (byte-identical duplicates: not distinct images).
    """
    histogram = np.zeros(bits + 2, dtype=np.int64)
    stored_rows, stored_starts = _stack(stored)
    if len(stored_rows) == 0:
        return PairCounts(histogram, 0)
    stored_words = _words(stored_rows)
    pairs = 0
    query_index = 0
    while query_index < len(queries):
        block: list[Codes] = []
        rows = 0
        first = query_index
        while query_index < len(queries) and (rows < _BLOCK_ROWS or not block):
            block.append(queries[query_index])
            rows += len(queries[query_index])
            query_index += 1
        closest = _block_closest(block, stored_words, stored_starts, len(stored), bits)
        for offset in range(len(block)):
            owner = query_owner[first + offset]
            keep = np.ones(len(stored), dtype=bool)
            if owner >= 0:
                keep[owner] = False
            for a, b in skip_pairs:
                if a == owner:
                    keep[b] = False
            row = closest[offset][keep]
            histogram += np.bincount(np.minimum(row, bits + 1), minlength=bits + 2)
            pairs += int(keep.sum())
    return PairCounts(histogram, pairs)


def _block_closest(
    block: list[Codes], stored_words: npt.NDArray[np.uint64], stored_starts: npt.NDArray[np.intp],
    stored_count: int, bits: int,
) -> npt.NDArray[np.int64]:
    """(len(block), stored_count) closest distances; NO_MATCH where a query set is empty."""
    result = np.full((len(block), stored_count), bits + 1, dtype=np.int64)
    nonempty = [i for i, codes in enumerate(block) if len(codes)]
    if not nonempty:
        return result
    rows, starts = _stack([block[i] for i in nonempty])
    words = _words(rows)
    distances = np.zeros((len(words), len(stored_words)), dtype=np.int64)
    for w in range(words.shape[1]):
        distances += np.bitwise_count(words[:, w, None] ^ stored_words[None, :, w])
    per_query = np.minimum.reduceat(distances, starts, axis=0)
    per_pair = np.minimum.reduceat(per_query, stored_starts, axis=1)
    result[nonempty] = per_pair
    return result


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
