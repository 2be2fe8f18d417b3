"""Exact Hamming radius search over 256-bit codes by multi-index hashing.

The layout, the build and the search plans are here, in NumPy; the search itself (probing,
verifying, scanning) is a small C kernel, `_mih.c`, because in NumPy a query paid ~30 array
calls of fixed overhead and a batch paid for temporaries as large as its candidates (at 1M codes,
r = 31, measured by loadtests/bench_search.py: a single query 0.16 ms warm and 0.54 ms with cold
caches in NumPy, 0.05 and 0.14 ms in C; in batches ~120 µs a query in NumPy, ~40 µs in C).

Why not FAISS: its flat index compares the query with every code (tens of ms per query at 10M
codes); its multi-hash index (HMA's choice) is exact with nflip = r // 16 but slower still at 10M
and takes 2.6 GB; its approximate indexes lose matches, which a known-bad list may never do.
Measured side by side by loadtests/bench_search.py.

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
- ``layout``  (m, 2) int64: bit offset and length L_k of each substring (longest first), bits
  numbered in the little-endian uint64 words of the code;
- ``ids``     (m, N) uint32: row k holds every id sorted by substring k (then by id);
- ``offsets`` uint32, ``sum(2**L_k) + 1``: table k's 2**L_k buckets from ``seg_k``, in
  positions of the flattened ``ids``: bucket v of table k is
  ``ids.ravel()[offsets[seg_k + v] : offsets[seg_k + v + 1]]`` (the last bucket of a table ends
  where the next table begins; the final entry is m·N). Direct addressing: a probe is two array
  reads, no hashing, no search. Longest tables first makes every ``seg_k`` a multiple of
  ``2**L_k``, so a probe's position is ``(seg_k + key) ^ flips``: one XOR per probe.

Per entry: 32 bytes of code + 4 bytes per table (48 bytes for m=12), plus the offsets, which
depend only on the substring length (4 · 2**L bytes per table: 128 MiB at 10M, 8 MiB at 1M).
uint32 positions limit an index to m·N < 2**32 (about 350M codes).
10M codes take ≈ 930 MiB in all, within the 1.5 GB budget; FAISS's flat index alone is 320 MB.
The substring length follows log2(N), as the paper recommends: buckets then hold about one code
each, so probes and candidates cost about the same.

**Radius policy.** The enumeration radius is chosen per search radius, not fixed at design
time: the plan for a radius (which tables, how many flipped bits, which bit masks) is computed
once and cached, so a bank threshold of 40 or 64 is as exact as 31, only slower (at 10M codes:
~2,000 probes at r=31, ~220,000 at r=64). When the estimated cost of probing exceeds that of
scanning every code (an index of a few thousand codes; r above ~64 at 1M codes or ~72 at 10M;
or, at search time, buckets crowded by clustered codes), the search scans all codes instead:
both paths return the same results, only the time differs.

**Batches** (the scanner sends the 8 dihedral variants together) are one kernel call, with the
GIL released. At 1M codes and r = 31 a query reads ~1,400 buckets and verifies ~1,400 codes,
nearly all cache misses: the kernel reads each stream ahead with prefetches (see _mih.c), which
is what bounds its speed, not arithmetic.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from hashsvc.matching import _mih

CODE_BYTES: Final = 32
CODE_BITS: Final = CODE_BYTES * 8
FILES: Final = ("codes", "layout", "ids", "offsets")

# Costs per bucket probed, per candidate verified and per code scanned, in ns, of the C kernel
# (`_mih.c`) on this project's 2-core EPYC, at 1M random codes and r = 31 (1,409 probes:
# 17 µs a query; 1,419 candidates: 22 µs; a scan: 1.3 ms). They only choose between two exact
# paths, so rough values are enough.
_COST_PROBE: Final = 12.0
_COST_CANDIDATE: Final = 15.0
_COST_SCAN: Final = 1.3  # per code and query
_COST_FIXED: Final = 1_000.0  # per call: argument checks, the plan's arrays
_MAX_PROBES: Final = 1 << 20  # per query; beyond, the plan's own arrays get large
_PARALLEL_BUILD: Final = 100_000  # codes: below, building on one thread is as fast

UInt8Array = npt.NDArray[np.uint8]
Method = Literal["auto", "probe", "scan"]
RangeResult = tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32], npt.NDArray[np.int64]]


def default_layout(count: int) -> npt.NDArray[np.int64]:
    """Substrings of about log2(count) bits (8 to 24), longest first, covering the 256 bits.

    With L ≈ log2(N) a bucket holds about one code, so probing and verifying cost alike (the
    paper's choice; measured here: 13 × 19-20 bits beat 16 × 16 at 1M, 12 × 21-22 beat
    11 × 23-24 at 10M). 24 bits at most keeps the offsets at 64 MiB per table.
    """
    target = min(24, max(8, round(math.log2(max(count, 2)))))
    tables = math.ceil(CODE_BITS / target)
    lengths = np.full(tables, CODE_BITS // tables, dtype=np.int64)
    lengths[: CODE_BITS % tables] += 1  # the first few are one bit longer
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return np.stack([starts, lengths], axis=1)


@dataclass(frozen=True)
class _Plan:
    """How to search at one radius: the probes of one query, in table order."""

    cheaper: Method  # by the cost model, for codes spread like random ones
    table: npt.NDArray[np.int64]  # (P,) which substring each probe reads; empty: too many
    flips: npt.NDArray[np.int64]  # (P,) bits to flip in that substring


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
        """Index `codes` ((N, 32) uint8). `ids` and `offsets` are given only by `from_arrays`."""
        if codes.ndim != 2 or codes.shape[1] != CODE_BYTES or codes.dtype != np.uint8:
            raise ValueError(f"codes must be (N, {CODE_BYTES}) uint8, got {codes.shape} "
                             f"{codes.dtype}")
        # Plain ndarray views of memory maps: np.memmap's Python-level subclass hooks would
        # otherwise run on every array an operation returns (microseconds each, dozens a query).
        self.codes: UInt8Array = np.ascontiguousarray(codes)
        count = len(codes)
        building = ids is None or offsets is None
        layout = default_layout(count) if layout is None else np.array(layout, dtype=np.int64)
        if building:  # longest first, so that every table's segment is aligned (see above)
            layout = layout[np.argsort(-layout[:, 1], kind="stable")]
        self.layout: npt.NDArray[np.int64] = layout
        _check_layout(layout)
        lengths = layout[:, 1]
        if len(layout) * count >= 1 << 32:
            raise ValueError(f"{count} codes × {len(layout)} tables: positions exceed uint32")
        self._segments = np.concatenate(([0], np.cumsum(1 << lengths)[:-1])).astype(np.int64)
        size = int(np.sum(1 << lengths)) + 1
        if ids is None or offsets is None:
            ids, offsets = self._build(size)
        if (ids.dtype != np.uint32 or offsets.dtype != np.uint32
                or ids.shape != (len(layout), count) or offsets.shape != (size,)
                or np.any(np.take(offsets, self._segments) != np.arange(len(layout)) * count)
                or int(offsets[-1]) != len(layout) * count):
            raise ValueError("ids or offsets do not match the codes and layout")
        self.ids: npt.NDArray[np.uint32] = np.asarray(ids)
        self.offsets: npt.NDArray[np.uint32] = np.asarray(offsets)
        self._flat_ids = self.ids.reshape(-1)
        # (start bit, length, segment) per table: what the kernel needs to cut a query's keys.
        self._cuts = np.ascontiguousarray(
            np.column_stack([layout, self._segments]), dtype=np.int64)
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

    # ---- building -------------------------------------------------------------------------

    def _build(self, size: int) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        count = len(self.codes)
        ids = np.empty((self.tables, count), dtype=np.uint32)
        offsets = np.empty(size, dtype=np.uint32)
        row = np.arange(count, dtype=np.uint64)

        def build_table(k: int) -> None:
            start, length = (int(v) for v in self.layout[k])
            keys = _substrings(self.codes.view("<u8"),
                               np.array([[start, length]], dtype=np.int64))[:, 0]
            # One sort of (key, id) packed into a uint64 orders ids by bucket, then by id; it is
            # several times faster than a stable argsort of the keys.
            packed = np.sort((keys << np.uint64(32)) | row)
            ids[k] = packed.astype(np.uint32)  # the low 32 bits: the id
            counts = np.bincount(keys, minlength=1 << length)
            segment = offsets[self._segments[k] : self._segments[k] + (1 << length)]
            segment[0] = k * count
            segment[1:] = np.cumsum(counts[:-1]) + k * count

        # Tables are independent and NumPy's sort releases the GIL: one thread per core builds
        # them side by side (10M codes: the build is most of a snapshot's publish).
        workers = min(self.tables, os.cpu_count() or 1) if count >= _PARALLEL_BUILD else 1
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(build_table, range(self.tables)))
        offsets[-1] = self.tables * count
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

    def range_search(self, queries: UInt8Array, radius: int, *,
                     method: Method = "auto") -> RangeResult:
        """Every code within `radius` (inclusive) of each query: `(limits, distances, labels)`.

        CSR layout, as FAISS returns it: query i's hits are `labels[limits[i]:limits[i+1]]`
        (ids, int64, ascending) with their distances (int32). `method` forces one of the two
        exact paths ("probe": multi-index probing, "scan": brute force), for tests and
        benchmarks; "auto" takes the one estimated to be cheaper, per query. The GIL is released
        while the kernel runs.
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        if queries.ndim != 2 or queries.shape[1] != CODE_BYTES:
            raise ValueError(f"queries must be (Q, {CODE_BYTES}) uint8, got {queries.shape}")
        radius = min(int(radius), CODE_BITS)
        count = len(queries)
        if count == 0 or len(self) == 0 or radius < 0:
            return _empty(count)
        plan = self._plan(radius)
        if method == "probe" and len(plan.table) == 0:
            raise ValueError(f"radius {radius} needs more than {_MAX_PROBES} probes per query "
                             f"with {self.tables} tables: use method='scan'")
        scan = method == "scan" or (method == "auto" and plan.cheaper == "scan")
        # Past this many candidates a query's buckets are crowded (clustered codes): scanning
        # every code is then cheaper, and as exact.
        scan_limit = -1 if scan else (
            int(len(self) * _COST_SCAN / _COST_CANDIDATE) if method == "auto" else 1 << 62)
        limits, distances, labels = _mih.search(
            self.codes, self._flat_ids, self.offsets, self._cuts, plan.table, plan.flips,
            queries, radius, scan_limit)
        return (np.frombuffer(limits, dtype=np.uint64), np.frombuffer(distances, dtype=np.int32),
                np.frombuffer(labels, dtype=np.int64))

    def method(self, radius: int) -> Method:
        """The path "auto" takes at `radius` for codes spread like random ones ("probe" or
        "scan"); crowded buckets can still turn a query to a scan at search time."""
        return self._plan(min(int(radius), CODE_BITS)).cheaper

    def _plan(self, radius: int) -> _Plan:
        # A race between threads only computes the same plan twice; a service uses a radius or
        # two (its largest threshold), so the cache is bounded just in case.
        plan = self._plans.get(radius)
        if plan is None:
            if len(self._plans) >= 8:
                self._plans.clear()
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
        cheaper: Method = "probe" if mih_cost < _COST_SCAN * count else "scan"
        if probes > _MAX_PROBES:
            return _Plan("scan", np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        flips = [_flip_masks(lengths[k], radii[k]) for k in range(tables)]
        table = np.repeat(np.arange(tables, dtype=np.int64), [len(f) for f in flips])
        return _Plan(cheaper, table, np.concatenate(flips))


def _check_layout(layout: npt.NDArray[np.int64]) -> None:
    """Substrings of 1..32 bits, longest first, that tile the 256 bits."""
    if layout.ndim != 2 or layout.shape[1] != 2 or len(layout) == 0:
        raise ValueError("layout must be (m, 2): start bit and length of each substring")
    by_start = layout[np.argsort(layout[:, 0])]
    starts, lengths = by_start[:, 0], by_start[:, 1]
    if (lengths.min() < 1 or lengths.max() > 32 or starts[0] != 0
            or np.any(starts[1:] != np.cumsum(lengths)[:-1]) or lengths.sum() != CODE_BITS
            or np.any(np.diff(layout[:, 1]) > 0)):
        raise ValueError(f"layout must cover the {CODE_BITS} bits contiguously in substrings "
                         "of 1..32 bits, longest first")


def _flip_masks(length: int, bits: int) -> npt.NDArray[np.int64]:
    """Every `length`-bit mask with at most `bits` bits set, by weight (0 first); none if
    `bits` < 0 (a table that the pigeonhole bound does not need)."""
    if bits < 0:
        return np.empty(0, dtype=np.int64)
    masks = [np.zeros(1, dtype=np.int64)]
    top = np.full(1, -1, dtype=np.int64)  # highest set bit of each mask of the last weight
    for _ in range(bits):
        grown, grown_top = [], []
        for bit in range(length):
            base = masks[-1][top < bit]
            grown.append(base | (1 << bit))
            grown_top.append(np.full(len(base), bit, dtype=np.int64))
        masks.append(np.concatenate(grown))
        top = np.concatenate(grown_top)
    return np.concatenate(masks)


def _substrings(words: npt.NDArray[np.uint64], layout: npt.NDArray[np.int64]
                ) -> npt.NDArray[np.uint64]:
    """(Q, 4) little-endian words -> (Q, m) substrings, per `layout` (bit p of the code is bit
    p % 64 of word p // 64: fixed little-endian so that files mean the same on any machine)."""
    start, length = layout[:, 0], layout[:, 1]
    word, shift = np.divmod(start, 64)
    spans = shift + length > 64  # the substring continues in the next word
    high_word = np.where(spans, word + 1, word)
    high_shift = np.where(spans, 64 - shift, 0).astype(np.uint64)
    high_mask = np.where(spans, ~np.uint64(0), np.uint64(0))
    value = words[:, word] >> shift.astype(np.uint64)
    value |= (words[:, high_word] << high_shift) & high_mask
    value &= (np.uint64(1) << length.astype(np.uint64)) - np.uint64(1)
    return value


def _empty(count: int) -> RangeResult:
    return (np.zeros(count + 1, dtype=np.uint64), np.empty(0, dtype=np.int32),
            np.empty(0, dtype=np.int64))


