"""Multi-index hashing against brute force: every code within the radius, exactly, every time."""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from hashsvc.hashing.algorithms import PDQ
from hashsvc.matching.mih import FILES, Method, MultiIndexHash, default_layout
from loadtests.bench_core import _clustered_codes

THRESHOLD = PDQ.default_threshold  # the project's own constant: a drifted copy would hide bugs
METHODS: tuple[Method, ...] = ("auto", "probe", "scan")

Codes = npt.NDArray[np.uint8]
Hits = set[tuple[int, int, int]]


def _random(rng: np.random.Generator, count: int) -> Codes:
    return rng.integers(0, 256, size=(count, 32), dtype=np.uint8)


def _flip(rng: np.random.Generator, code: Codes, bits: int) -> Codes:
    """`code` with exactly `bits` distinct bits flipped."""
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(unpacked.size, size=bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def _brute_force(codes: Codes, queries: Codes, radius: int) -> Hits:
    """(query, label, distance) of every code within `radius`, by popcount over all codes."""
    words = codes.view(np.uint64)
    hits: Hits = set()
    for q, query in enumerate(queries):
        distances = np.bitwise_count(words ^ query.view(np.uint64)).sum(axis=1)
        hits.update((q, int(label), int(distances[label]))
                    for label in np.flatnonzero(distances <= radius))
    return hits


def _as_hits(result: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
             queries: int) -> Hits:
    limits, distances, labels = result
    assert limits.shape == (queries + 1,) and limits[0] == 0 and limits[-1] == len(labels)
    assert np.all(np.diff(limits.astype(np.int64)) >= 0)
    assert distances.dtype == np.int32 and labels.dtype == np.int64 and limits.dtype == np.uint64
    hits: Hits = set()
    for q in range(queries):
        span = slice(int(limits[q]), int(limits[q + 1]))
        assert np.all(np.diff(labels[span]) > 0), "labels ascending, each once"
        hits.update((q, int(label), int(d))
                    for label, d in zip(labels[span], distances[span], strict=True))
    return hits


def _check(index: MultiIndexHash, codes: Codes, queries: Codes, radius: int,
           methods: tuple[Method, ...] = METHODS) -> Hits:
    expected = _brute_force(codes, queries, radius)
    for method in methods:
        found = _as_hits(index.range_search(queries, radius, method=method), len(queries))
        assert found == expected, f"method={method}, radius={radius}"
    return expected


def _planted(rng: np.random.Generator, count: int, queries: int, distances: range
             ) -> tuple[Codes, Codes]:
    """A random haystack with, for each query, one code at each of `distances`, shuffled in."""
    query_codes = _random(rng, queries)
    planted = np.array([_flip(rng, q, d) for q in query_codes for d in distances])
    codes = np.concatenate([_random(rng, count), planted])
    return codes[rng.permutation(len(codes))], query_codes


@pytest.mark.parametrize("count", [3_000, 200_000])
def test_planted_neighbours_at_every_distance(count: int) -> None:
    rng = np.random.default_rng(count)
    codes, queries = _planted(rng, count, queries=8, distances=range(THRESHOLD + 3))
    index = MultiIndexHash(codes)
    if count == 200_000:
        assert index.method(THRESHOLD) == "probe"  # the path this test is about
    hits = _check(index, codes, queries, THRESHOLD)  # the 8 queries as one batch
    for q in range(len(queries)):
        distances = sorted(d for owner, _, d in hits if owner == q)
        assert distances[: THRESHOLD + 1] == list(range(THRESHOLD + 1))  # 0..t all found
        assert max(distances) == THRESHOLD  # t+1 and t+2 not
    # One query at a time gives the same as the batch.
    single = set()
    for q in range(len(queries)):
        single |= {(q, label, d) for _, label, d in
                   _as_hits(index.range_search(queries[q : q + 1], THRESHOLD), 1)}
    assert single == hits


def test_equals_faiss_range_search() -> None:
    """A drop-in for FAISS: same CSR layout and hits as `range_search(queries, radius + 1)`."""
    rng = np.random.default_rng(5)
    codes, queries = _planted(rng, 50_000, queries=8, distances=range(0, 40, 3))
    flat = faiss.IndexBinaryFlat(256)
    flat.add(codes)
    limits, distances, labels = flat.range_search(queries, THRESHOLD + 1)
    ours = MultiIndexHash(codes).range_search(queries, THRESHOLD)
    assert np.array_equal(ours[0], limits)
    assert _as_hits(ours, len(queries)) == {
        (q, int(labels[j]), int(distances[j]))
        for q in range(len(queries)) for j in range(int(limits[q]), int(limits[q + 1]))
    }


def test_clustered_haystack() -> None:
    """Near-duplicates crowd some buckets; queries inside the clusters and near them."""
    rng = np.random.default_rng(11)
    codes = np.unique(_clustered_codes(150_000, seed=3), axis=0)  # distinct, as in a snapshot
    members = codes[rng.choice(len(codes), size=24, replace=False)]
    queries = np.concatenate([members, [_flip(rng, m, 12) for m in members[:16]]])
    index = MultiIndexHash(codes)
    hits = _check(index, codes, queries, THRESHOLD)
    assert len(hits) > len(queries)  # the clusters really were hit


def test_tight_cluster_crowds_buckets() -> None:
    """Thousands of codes within a few bits of one another, the rest random."""
    rng = np.random.default_rng(13)
    centre = _random(rng, 1)[0]
    cluster = np.array([_flip(rng, centre, int(d)) for d in rng.integers(1, 12, 3_000)])
    codes = np.unique(np.concatenate([_random(rng, 60_000), cluster]), axis=0)
    queries = np.array([centre] + [_flip(rng, centre, d) for d in (3, 10, 20, 30)])
    hits = _check(MultiIndexHash(codes), codes, queries, THRESHOLD)
    assert len(hits) > 3_000


def test_crowded_buckets_turn_to_a_scan() -> None:
    """70% of the codes within a few bits of one centre: ~1M candidates per query, more than
    scanning costs; forced probing and the automatic choice (a scan) agree with brute force."""
    rng = np.random.default_rng(41)
    centre = _random(rng, 1)[0]
    cluster = centre ^ np.packbits(rng.random((70_000, 256)) < 1 / 64, axis=1)
    codes = np.unique(np.concatenate([_random(rng, 30_000), cluster]), axis=0)
    hits = _check(MultiIndexHash(codes), codes, np.stack([centre, _flip(rng, centre, 2)]),
                  THRESHOLD)
    assert len(hits) > 100_000


@pytest.mark.parametrize("radius", [0, 1, 7, 15, 16, 17, 32, 33, 40, 48, 64])
def test_any_radius_is_exact(radius: int) -> None:
    """Radii below, at and above the design threshold, with probing forced and not."""
    rng = np.random.default_rng(radius)
    codes, queries = _planted(rng, 20_000, queries=4,
                              distances=range(max(0, radius - 4), radius + 3))
    _check(MultiIndexHash(codes), codes, queries, radius)


def test_large_radius_goes_to_a_scan_and_huge_ones_cannot_probe() -> None:
    rng = np.random.default_rng(17)
    codes = _random(rng, 1_000)
    index = MultiIndexHash(codes)
    assert index.method(THRESHOLD) == "scan"  # 1,000 codes: scanning beats ~30 µs of probing
    assert MultiIndexHash(_random(rng, 20_000)).method(128) == "scan"
    _check(index, codes, codes[:3], 128)
    everything = index.range_search(codes[:2], 256)
    assert everything[0].tolist() == [0, 1_000, 2_000]
    # 17-bit substrings at radius 200 would need ~2M probes per query: refused, not attempted.
    big = MultiIndexHash(_random(rng, 200_000))
    assert big.method(200) == "scan"
    with pytest.raises(ValueError, match="method='scan'"):
        big.range_search(codes[:1], 200, method="probe")


@pytest.mark.parametrize("radius", [THRESHOLD, 254, 255, 256, 300])
def test_complement_is_at_distance_256(radius: int) -> None:
    """Every bit differs: the one distance whose per-word counts (4 × 64) overflow a byte."""
    rng = np.random.default_rng(43)
    query = _random(rng, 1)[0]
    codes = np.concatenate([_random(rng, 500), [~query, query, _flip(rng, query, 255)]])
    hits = _check(MultiIndexHash(codes), codes, query[None], radius)
    assert ((0, 500, 256) in hits) == (radius >= 256)
    assert (0, 501, 0) in hits


def test_large_batch_answers_each_query_on_its_own() -> None:
    """6,000 queries (60 distinct ones repeated 100 times, shuffled): each gets its own hits."""
    rng = np.random.default_rng(19)
    codes, distinct = _planted(rng, 20_000, queries=60, distances=range(0, 34, 2))
    order = rng.permutation(np.repeat(np.arange(60), 100))
    queries = distinct[order]
    index = MultiIndexHash(codes)
    per_distinct: dict[int, set[tuple[int, int]]] = {}
    for q, label, d in _brute_force(codes, distinct, THRESHOLD):
        per_distinct.setdefault(q, set()).add((label, d))
    expected = {(i, label, d) for i, q in enumerate(order.tolist())
                for label, d in per_distinct.get(q, set())}
    for method in METHODS[:2]:  # auto, probe
        assert _as_hits(index.range_search(queries, THRESHOLD, method=method),
                        len(queries)) == expected


def test_empty_index_and_empty_batch() -> None:
    empty = MultiIndexHash(np.empty((0, 32), dtype=np.uint8))
    queries = _random(np.random.default_rng(23), 3)
    for method in METHODS:
        limits, distances, labels = empty.range_search(queries, THRESHOLD, method=method)
        assert limits.tolist() == [0, 0, 0, 0] and len(distances) == len(labels) == 0
    index = MultiIndexHash(queries)
    limits, distances, labels = index.range_search(queries[:0], THRESHOLD)
    assert limits.tolist() == [0] and len(distances) == len(labels) == 0
    assert index.range_search(queries, -1)[0].tolist() == [0, 0, 0, 0]


def test_duplicates_of_the_query() -> None:
    """Copies of the query in the haystack are all returned; repeated queries all answered."""
    rng = np.random.default_rng(29)
    codes = _random(rng, 40_000)
    query = codes[123].copy()
    codes[[7, 9_999, 39_999]] = query  # not distinct: each row is still its own id
    index = MultiIndexHash(codes)
    queries = np.stack([query, query, _flip(rng, query, 5), query])
    hits = _check(index, codes, queries, THRESHOLD)
    for q in (0, 1, 3):
        assert {(label, d) for owner, label, d in hits if owner == q} == {
            (7, 0), (123, 0), (9_999, 0), (39_999, 0)}


def test_save_and_load_memory_mapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(31)
    codes, queries = _planted(rng, 30_000, queries=4, distances=range(0, 34, 3))
    built = MultiIndexHash(codes)
    paths = built.save(tmp_path / "pdq.mih")
    assert sorted(p.name for p in paths) == sorted(f"pdq.mih.{name}.npy" for name in FILES)
    loaded = MultiIndexHash.load(tmp_path / "pdq.mih")
    for name in ("codes", "ids", "offsets"):  # shared through the page cache, not copied
        assert _is_memory_mapped(loaded.arrays()[name]), name
    assert loaded.nbytes == built.nbytes
    for method in METHODS:
        assert _as_hits(loaded.range_search(queries, THRESHOLD, method=method), 4) == \
            _as_hits(built.range_search(queries, THRESHOLD), 4)
    # The files are plain .npy: any reader can map them.
    ids = np.load(tmp_path / "pdq.mih.ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint32 and ids.shape == (built.tables, len(codes))


def _is_memory_mapped(array: npt.NDArray[Any]) -> bool:
    base: Any = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base is not None


def test_mismatched_arrays_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(37)
    index = MultiIndexHash(_random(rng, 1_000))
    other = MultiIndexHash(_random(rng, 1_001))
    with pytest.raises(ValueError, match="do not match"):
        MultiIndexHash.from_arrays({**index.arrays(), "codes": index.codes[:999]})
    with pytest.raises(ValueError, match="do not match"):
        MultiIndexHash.from_arrays({**index.arrays(), "ids": other.ids})
    with pytest.raises(ValueError, match="contiguously"):
        MultiIndexHash(index.codes, np.array([[0, 128], [100, 128]], dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(N, 32\) uint8"):
        MultiIndexHash(np.zeros((4, 16), dtype=np.uint8))


def test_damaged_arrays_raise_instead_of_reading_out_of_bounds() -> None:
    """The kernel bounds every read by the buffers' sizes: a bucket bound or an id past the end
    (a damaged file that slipped past the checksums) is an error, not a crash."""
    rng = np.random.default_rng(47)
    codes = _random(rng, 5_000)
    index = MultiIndexHash(codes)
    offsets = index.offsets.copy()
    inner = np.ones(len(offsets), dtype=bool)
    starts = np.concatenate(([0], np.cumsum(1 << index.layout[:, 1])))  # each table's first
    inner[starts] = False  # bucket, and the end: what from_arrays checks
    offsets[inner] = np.uint32(2**31)
    damaged = MultiIndexHash.from_arrays({**index.arrays(), "offsets": offsets})
    with pytest.raises(ValueError, match="damaged"):
        damaged.range_search(codes[:4], THRESHOLD, method="probe")
    ids = index.ids.copy()
    ids[:] = np.uint32(len(codes))
    damaged = MultiIndexHash.from_arrays({**index.arrays(), "ids": ids})
    with pytest.raises(ValueError, match="damaged"):
        damaged.range_search(codes[:4], THRESHOLD, method="probe")
    # The scan reads only the codes: still exact.
    _check(damaged, codes, codes[:4], THRESHOLD, methods=("scan",))


@pytest.mark.parametrize("count", [0, 1, 1_000, 65_536, 1_000_000, 10_000_000, 2**30])
def test_default_layout_covers_every_bit(count: int) -> None:
    layout = default_layout(count)
    starts, lengths = layout[:, 0], layout[:, 1]
    assert starts[0] == 0 and np.array_equal(starts[1:], np.cumsum(lengths)[:-1])
    assert lengths.sum() == 256 and lengths.min() >= 8 and lengths.max() <= 24
    assert lengths.max() - lengths.min() <= 1
