"""Exact Hamming radius search over 256-bit codes by multi-index hashing, in NumPy.

Why not FAISS's flat index: it compares the query with every code (≈35 ms per query at 10M
codes); its multi-hash index is exact but keeps per-bucket vectors and is as slow at 10M; the
approximate indexes lose matches, which a known-bad list may never do.

**The pigeonhole argument** (Norouzi, Punjani & Fleet, "Fast exact search in Hamming space with
multi-index hashing", 2012/2014). Cut the 256 bits into m disjoint substrings. If
``d(q, x) <= r`` and ``r = m*s + a`` (``0 <= a < m``), then for *any* choice of ``a + 1`` of the
substrings, either one of those is within ``s`` bits of the query's substring, or one of the other
``m - a - 1`` is within ``s - 1`` bits: otherwise
``d >= (a + 1)(s + 1) + (m - a - 1)s = r + 1``. So probing, in each substring's table, the
query's substring with up to ``s`` (or ``s - 1``) of its bits flipped finds every code within
``r``: the search is exact, and the candidates are then verified with their full distance. For
r=31 and 12 substrings of 21-22 bits (10M codes): 8 tables probed at radius 2 and 4 at radius 1,
about 2,000 buckets of ~3 codes each, instead of 10M comparisons.

**Layout** (four flat arrays, nothing per entry in Python, all memory-mappable ``.npy``):

- ``codes``   (N, 32) uint8: row i is the code with id i (viewed as 4 × uint64 for popcount);
- ``layout``  (m, 2) int64: bit offset and length of each substring, bits numbered in the
  little-endian uint64 words of the code;
- ``ids``     (m, N) uint32: row k holds every id sorted by substring k (then by id);
- ``offsets`` uint32, one segment of ``2**L_k + 1`` per table: bucket v of table k holds
  ``ids[k, offsets[seg_k + v] : offsets[seg_k + v + 1]]``. Direct addressing: a probe is two
  array reads, no hashing, no search.

Per entry: 32 bytes of code + 4 bytes per table (48 bytes for m=12), plus the offsets, which
depend only on the substring length (4 · 2**L bytes per table: 128 MiB at 10M, 8 MiB at 1M).
10M codes take ≈ 930 MiB in all, within the 1.5 GB budget; FAISS's flat index alone is 320 MB.
The substring length follows log2(N), as the paper recommends: buckets then hold about one code
each, so probes and candidates cost about the same.

**Radius policy.** The plan for a radius (which tables, how many flipped bits, which bit masks)
is computed once and cached. Any radius is exact: larger radii just enumerate more buckets. When
the estimated cost of enumerating exceeds the cost of scanning every code (small indexes, or
radius ≳ 60 at 10M codes), the search scans all codes instead; both paths return the same
results, only the time differs.

**Batches** (the scanner sends the 8 dihedral variants together): every query's probes go
through the same few vectorised NumPy calls, so the per-call overhead is paid once per batch;
large batches are cut into chunks so that intermediate arrays stay small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

CODE_BYTES: Final = 32
CODE_BITS: Final = CODE_BYTES * 8
FILES: Final = ("codes", "layout", "ids", "offsets")

# Relative costs per probe, per candidate and per code scanned (measured on a 2-core EPYC with
# NumPy 2.4); they only decide between two exact paths, so rough values are enough.
_COST_PROBE: Final = 25.0
_COST_CANDIDATE: Final = 20.0
_COST_SCAN: Final = 6.0
_COST_FIXED: Final = 20_000.0  # the MIH path's ~30 NumPy calls, in the same (≈ns) unit
_MAX_PROBES: Final = 1 << 20  # probes of one query; beyond, the plan's own arrays get large
_CHUNK_PROBES: Final = 1 << 20  # probes (or candidates) per chunk of a large batch
_SCAN_ROWS: Final = 1 << 15  # codes per block of a brute-force scan

UInt8Array = npt.NDArray[np.uint8]
RangeResult = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32], npt.NDArray[np.int64]]


def default_layout(count: int) -> npt.NDArray[np.int64]:
    """Substrings of about log2(count) bits (16 to 24), covering the 256 bits contiguously."""
    target = min(24, max(16, round(math.log2(max(count, 2)))))
    tables = math.ceil(CODE_BITS / target)
    lengths = np.full(tables, CODE_BITS // tables, dtype=np.int64)
    lengths[: CODE_BITS % tables] += 1  # the first few are one bit longer
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.stack([starts, lengths], axis=1)


@dataclass(frozen=True)
class _Plan:
    """How to search at one radius: the probes of one query, in table order."""

    brute_force: bool
    table: npt.NDArray[np.intp]  # (P,) which substring each probe reads
    mask: npt.NDArray[np.uint64]  # (P,) bits to flip in that substring
    segment: npt.NDArray[np.int64]  # (P,) start of that table's segment in `offsets`
    id_base: npt.NDArray[np.int64]  # (P,) start of that table's row in the flattened `ids`


class MultiIndexHash:
    """Exact range search (every code within `radius`) over 256-bit codes; row i has id i.

    Read-only after construction, so threads may share one instance. `range_search` returns what
    FAISS's binary `range_search(queries, radius + 1)` returns: FAISS is strict (< radius), this
    is inclusive (<= radius), as the matcher's thresholds are.
    """

    def __init__(
        self,
        codes: UInt8Array,
        layout: npt.NDArray[np.int64] | None = None,
        *,
        ids: npt.NDArray[np.uint32] | None = None,
        offsets: npt.NDArray[np.uint32] | None = None,
    ) -> None:
        """Index `codes` ((N, 32) uint8). `ids` and `offsets` are given only by `load`."""
        if codes.ndim != 2 or codes.shape[1] != CODE_BYTES or codes.dtype != np.uint8:
            raise ValueError(f"codes must be (N, {CODE_BYTES}) uint8, got {codes.shape} "
                             f"{codes.dtype}")
        if len(codes) >= 1 << 32:
            raise ValueError("at most 2**32 - 1 codes (ids are uint32)")
        self.codes: UInt8Array = codes if codes.flags.c_contiguous else np.ascontiguousarray(codes)
        self.layout = default_layout(len(codes)) if layout is None else np.asarray(layout,
                                                                                  np.int64)
        starts, lengths = self.layout[:, 0], self.layout[:, 1]
        if (lengths.min() < 1 or lengths.max() > 32 or starts[0] != 0
                or np.any(starts[1:] != np.cumsum(lengths)[:-1]) or lengths.sum() != CODE_BITS):
            raise ValueError(f"layout must cover the {CODE_BITS} bits contiguously in "
                             "substrings of 1..32 bits")
        self._segments = np.concatenate(([0], np.cumsum((1 << lengths) + 1)[:-1]))
        if ids is None or offsets is None:
            ids, offsets = self._build()
        if ids.shape != (len(self.layout), len(codes)) or len(offsets) != int(
                np.sum((1 << lengths) + 1)):
            raise ValueError("ids or offsets do not match the codes and layout")
        self.ids = ids
        self.offsets = offsets
        self._flat_ids = ids.reshape(-1)
        self._plans: dict[int, _Plan] = {}

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def tables(self) -> int:
        return len(self.layout)

    @property
    def nbytes(self) -> int:
        """Bytes of the four arrays: what the index costs in memory (or page cache, if mapped)."""
        return int(self.codes.nbytes + self.layout.nbytes + self.ids.nbytes + self.offsets.nbytes)

    @cached_property
    def _words(self) -> npt.NDArray[np.uint64]:
        return self.codes.view(np.uint64)  # (N, 4): XOR and popcount a word at a time

    def _substrings(self, words: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        return _substrings(words.view("<u8"), self.layout)

    # ---- building -------------------------------------------------------------------------

    def _build(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        count = len(self.codes)
        ids = np.empty((self.tables, count), dtype=np.uint32)
        offsets = np.empty(int(self._segments[-1] + (1 << int(self.layout[-1, 1])) + 1),
                           dtype=np.uint32)
        row = np.arange(count, dtype=np.uint64)
        for k, (start, length) in enumerate(self.layout.tolist()):
            keys = _substring(self.codes, start, length)
            # One sort of (key, id) packed into a uint64 orders ids by bucket, then by id; it is
            # several times faster than a stable argsort of the keys.
            packed = np.sort((keys << np.uint64(32)) | row)
            ids[k] = packed.astype(np.uint32)  # the low 32 bits: the id
            segment = offsets[self._segments[k] : self._segments[k] + (1 << length) + 1]
            segment[0] = 0
            np.cumsum(np.bincount(keys, minlength=1 << length), out=segment[1:])
        return ids, offsets

    # ---- persistence ----------------------------------------------------------------------

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The arrays to persist, by name (`FILES`); `from_arrays` takes them back."""
        return {"codes": self.codes, "layout": self.layout, "ids": self.ids,
                "offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[Any]]) -> MultiIndexHash:
        """Wrap arrays (memory-mapped or not) without copying or rebuilding anything."""
        return cls(arrays["codes"], arrays["layout"], ids=arrays["ids"],
                   offsets=arrays["offsets"])

    def save(self, prefix: Path) -> list[Path]:
        """Write `<prefix>.<name>.npy` for each of `FILES`; returns the paths written."""
        paths = []
        for name, array in self.arrays().items():
            path = prefix.with_name(f"{prefix.name}.{name}.npy")
            with path.open("wb") as handle:
                np.save(handle, array, allow_pickle=False)
            paths.append(path)
        return paths

    @classmethod
    def load(cls, prefix: Path, *, mmap: bool = True) -> MultiIndexHash:
        """Open what `save` wrote. Memory-mapped by default: no copy, milliseconds at any size,
        and every process that maps the same files shares one copy in the page cache."""
        mode: Any = "r" if mmap else None
        return cls.from_arrays({
            name: np.load(prefix.with_name(f"{prefix.name}.{name}.npy"), mmap_mode=mode,
                          allow_pickle=False)
            for name in FILES
        })

    # ---- searching ------------------------------------------------------------------------

    def range_search(self, queries: UInt8Array, radius: int) -> RangeResult:
        """Every code within `radius` (inclusive) of each query: `(limits, distances, labels)`.

        CSR layout, as FAISS returns it: query i's hits are `labels[limits[i]:limits[i+1]]`
        (ids, int64, ascending) with their distances (int32).
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        if queries.ndim != 2 or queries.shape[1] != CODE_BYTES:
            raise ValueError(f"queries must be (Q, {CODE_BYTES}) uint8, got {queries.shape}")
        count = len(queries)
        if count == 0 or len(self) == 0 or radius < 0:
            return _empty(count)
        plan = self._plan(radius)
        words = queries.view(np.uint64)
        if plan.brute_force:
            return self._scan(words, radius)
        per_chunk = max(1, _CHUNK_PROBES // len(plan.table))
        parts = [self._probe(plan, words[i : i + per_chunk], radius)
                 for i in range(0, count, per_chunk)]
        if len(parts) == 1:
            return parts[0]
        return _concatenate(parts)

    def _probe(self, plan: _Plan, words: npt.NDArray[np.uint64], radius: int) -> RangeResult:
        # np.take rather than fancy indexing throughout: several times faster on 1-D gathers.
        count, probes = len(words), len(plan.table)
        subs = self._substrings(words)  # (Q, m)
        # Bucket of every probe of every query, query-major: (Q, P) -> (Q*P,).
        position = ((subs[:, plan.table] ^ plan.mask).view(np.int64) + plan.segment).ravel()
        starts = np.take(self.offsets, position).astype(np.int64)
        lengths = np.take(self.offsets, position + 1).astype(np.int64) - starts
        hit = np.flatnonzero(lengths)  # most buckets are empty when L ≈ log2(N)
        lengths = lengths[hit]
        owner_of_hit = hit // probes
        starts = starts[hit] + np.take(plan.id_base, hit - owner_of_hit * probes)
        total = int(lengths.sum())
        # Concatenate the buckets' id runs without a loop: position j of run b is starts[b] + j.
        ends = np.cumsum(lengths)
        index = np.arange(total, dtype=np.int64) + np.repeat(starts - ends + lengths, lengths)
        candidates = np.take(self._flat_ids, index).astype(np.int64)
        owner = np.repeat(owner_of_hit, lengths)  # which query each candidate belongs to
        xor = np.take(self._words, candidates, axis=0)
        xor ^= np.take(words, owner, axis=0)
        distances = _popcount(xor)
        keep = np.flatnonzero(distances <= radius)
        # A code close to the query sits in several tables' buckets: report it once.
        key = np.take(owner, keep) * len(self) + np.take(candidates, keep)
        key, first = np.unique(key, return_index=True)
        owners = key // len(self)
        limits = np.zeros(count + 1, dtype=np.uint64)
        np.cumsum(np.bincount(owners, minlength=count), out=limits[1:])
        return limits, np.take(distances, np.take(keep, first)), key - owners * len(self)

    def _scan(self, words: npt.NDArray[np.uint64], radius: int) -> RangeResult:
        """Brute force, block by block (the fallback for small indexes and large radii)."""
        rows = min(len(self), max(1024, _SCAN_ROWS // len(words)))
        # Each query repeated over a block, so that the XOR runs over long contiguous rows
        # (broadcasting a 4-word row is several times slower).
        tiled = np.repeat(words[:, None, :], rows, axis=1)  # (Q, rows, 4)
        owners, labels, distances = [], [], []
        for start in range(0, len(self), rows):
            block = self._words[start : start + rows]
            dist = _popcount(tiled[:, : len(block)] ^ block[None])  # (Q, rows)
            owner, label = np.nonzero(dist <= radius)
            owners.append(owner)
            labels.append(label + start)
            distances.append(dist[owner, label])
        owner = np.concatenate(owners)
        order = np.argsort(owner, kind="stable")  # by query, then (blocks in order) by id
        limits = np.zeros(len(words) + 1, dtype=np.uint64)
        np.cumsum(np.bincount(owner, minlength=len(words)), out=limits[1:])
        return (limits, np.concatenate(distances)[order].astype(np.int32),
                np.concatenate(labels)[order].astype(np.int64))

    def _plan(self, radius: int) -> _Plan:
        plan = self._plans.get(radius)
        if plan is None:
            plan = self._plans[radius] = self._make_plan(radius)
        return plan

    def _make_plan(self, radius: int) -> _Plan:
        """Choose the radius of each table (pigeonhole) and the cheaper of probing or scanning.

        With r = m*s + a, a + 1 tables are probed at radius s and the others at s - 1; any a + 1
        tables will do, so those whose extra flipped bit costs least are chosen.
        """
        lengths = self.layout[:, 1].tolist()
        tables = len(lengths)
        s, a = divmod(radius, tables)
        count = len(self)

        def cost(length: int, bits: int) -> float:
            probes = sum(math.comb(length, j) for j in range(bits + 1))
            return probes * (_COST_PROBE + _COST_CANDIDATE * count / 2.0**length)

        extra = sorted(range(tables), key=lambda k: cost(lengths[k], s) - cost(lengths[k], s - 1))
        radii = [s - 1] * tables
        for k in extra[: a + 1]:
            radii[k] = s
        probes = sum(sum(math.comb(lengths[k], j) for j in range(radii[k] + 1))
                     for k in range(tables))
        mih_cost = _COST_FIXED + sum(cost(lengths[k], radii[k]) for k in range(tables))
        if probes > _MAX_PROBES or mih_cost >= _COST_SCAN * count:
            none = np.empty(0, dtype=np.int64)
            return _Plan(True, none.astype(np.intp), none.astype(np.uint64), none, none)
        table, mask = [], []
        for k in range(tables):
            flips = _flip_masks(lengths[k], radii[k])
            table.append(np.full(len(flips), k, dtype=np.intp))
            mask.append(flips)
        table_of = np.concatenate(table)
        return _Plan(False, table_of, np.concatenate(mask),
                     self._segments[table_of].astype(np.int64),
                     table_of.astype(np.int64) * count)


def _flip_masks(length: int, bits: int) -> npt.NDArray[np.uint64]:
    """Every `length`-bit mask with at most `bits` bits set, by weight (0 first)."""
    masks = [np.zeros(1, dtype=np.uint64)]
    top = np.full(1, -1, dtype=np.int64)  # highest set bit of each mask of the last weight
    for _ in range(bits):
        grown, grown_top = [], []
        for bit in range(length):
            base = masks[-1][top < bit]
            grown.append(base | np.uint64(1 << bit))
            grown_top.append(np.full(len(base), bit, dtype=np.int64))
        masks.append(np.concatenate(grown))
        top = np.concatenate(grown_top)
    return np.concatenate(masks)


def _substring(codes: UInt8Array, start: int, length: int) -> npt.NDArray[np.uint64]:
    """Bits start..start+length-1 of each code, numbering bits in little-endian uint64 words
    (fixed little-endian so that files mean the same on any machine)."""
    return _substrings(codes.view("<u8"), np.array([[start, length]], dtype=np.int64))[:, 0]


def _substrings(words: npt.NDArray[np.uint64], layout: npt.NDArray[np.int64]
                ) -> npt.NDArray[np.uint64]:
    """(Q, 4) words -> (Q, m) substrings, per `layout`, with a handful of vectorised calls."""
    start, length = layout[:, 0], layout[:, 1]
    word, shift = np.divmod(start, 64)
    spans = shift + length > 64  # the substring continues in the next word
    high_word = np.where(spans, word + 1, word)
    high_shift = np.where(spans, 64 - shift, 0).astype(np.uint64)
    high_mask = np.where(spans, ~np.uint64(0), np.uint64(0))
    value = words[:, word] >> shift.astype(np.uint64)
    value |= (words[:, high_word] << high_shift) & high_mask
    value &= ((np.uint64(1) << length.astype(np.uint64)) - np.uint64(1))
    return value


def _popcount(xor: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
    """Hamming weight of each row of 4 words (any leading shape).

    The 4 per-word counts (each <= 64) are one uint32 per row; adding its bytes with two
    masked shifts is several times faster than NumPy's reduction over a length-4 axis.
    """
    packed = np.bitwise_count(xor).view(np.uint32)[..., 0].astype(np.int32)
    pairs = (packed & 0x00FF00FF) + ((packed >> 8) & 0x00FF00FF)  # two sums <= 128
    total: npt.NDArray[np.int32] = (pairs & 0xFFFF) + (pairs >> 16)
    return total


def _empty(count: int) -> RangeResult:
    return (np.zeros(count + 1, dtype=np.uint64), np.empty(0, dtype=np.int32),
            np.empty(0, dtype=np.int64))


def _concatenate(parts: list[RangeResult]) -> RangeResult:
    limits = [parts[0][0]]
    for part in parts[1:]:
        limits.append(part[0][1:] + limits[-1][-1])
    return (np.concatenate(limits), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))
