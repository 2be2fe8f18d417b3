"""Exact PDQ radius search, side by side: FAISS flat (the baseline), FAISS multi-hash (what HMA
uses) and hashsvc's multi-index hashing (`matching/mih.py`), on one core, at the PDQ threshold.

    python loadtests/bench_search.py                        1M and 10M, random and clustered codes
    python loadtests/bench_search.py --sizes 1000000 --queries 500
    python loadtests/bench_search.py --smoke                1M codes, ~30 s (CI)

For each size and each kind of codes (uniformly random; bench_core's clustered codes, a quarter of
them near-duplicates), it reports per structure: median and p99 latency of a single query, warm
(queries back to back) and cold (each after a 64 MiB read evicted the CPU caches and TLBs and the
core was yielded, as between a worker's requests), each with its speed-up over the flat index;
median latency of a batch of 8 (the scanner's dihedral variants); build time; memory (the RSS
growth while building, and the index's own bytes where known); and whether its results equal brute
force (NumPy popcount over every code) on a sample of queries, some with planted neighbours at
every distance 0..t+2.
The multi-index hash is timed as a worker uses it: saved, then loaded memory-mapped (its save and
load times are reported too).

Queries are a mix: some with planted neighbours, a quarter near-duplicates of listed codes, the
rest random (most uploads match nothing). Structures are timed in rotating order, so that a noisy
neighbour on a shared machine slows them alike and the ratios stay fair. Each data set runs in a
process of its own. Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_search.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from hashsvc.hashing.algorithms import PDQ  # noqa: E402
from hashsvc.matching.mih import MultiIndexHash  # noqa: E402
from loadtests.bench_core import _clustered_codes  # noqa: E402

RADIUS = PDQ.default_threshold
STRUCTURES = ("flat", "multihash", "mih")
KINDS = ("random", "clustered")
PLANTED_DISTANCES = range(RADIUS + 3)  # 0..t+2: t is found, t+1 and t+2 are not

Codes = npt.NDArray[np.uint8]
Result = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]
Hits = set[tuple[int, int, int]]


@dataclass
class Measured:
    name: str
    search: Callable[[Codes], Result]
    build_seconds: float
    rss_delta_mib: float
    index_mib: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    warm: list[float] = field(default_factory=list)  # seconds per single query
    cold: list[float] = field(default_factory=list)
    batch8: list[float] = field(default_factory=list)  # seconds per batch of 8
    faults_per_query: float = 0.0
    exact: bool | None = None


def _rss_bytes() -> int:
    with Path("/proc/self/statm").open() as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _make_data(count: int, kind: str, queries: int, seed: int
               ) -> tuple[Codes, Codes, npt.NDArray[np.int64]]:
    """Codes, queries, and the indices of the queries to check against brute force."""
    rng = np.random.default_rng(seed)
    codes = (rng.integers(0, 256, size=(count, 32), dtype=np.uint8) if kind == "random"
             else _clustered_codes(count, seed=seed))
    planted_queries = min(16, max(1, queries // 8))
    near = queries // 4
    query_codes = rng.integers(0, 256, size=(queries, 32), dtype=np.uint8)
    # Planted: codes at every distance 0..t+2 of the first queries, written over random rows.
    rows = rng.choice(count, size=planted_queries * len(PLANTED_DISTANCES), replace=False)
    planted = [_flip(rng, query_codes[q], d)
               for q in range(planted_queries) for d in PLANTED_DISTANCES]
    codes[rows] = np.array(planted)
    # Near-duplicates of listed codes (in clusters, for clustered codes): 0..16 bits flipped.
    members = rng.choice(count, size=near, replace=False)
    for i, member in enumerate(members.tolist()):
        query_codes[planted_queries + i] = _flip(rng, codes[member], int(rng.integers(0, 17)))
    check = np.concatenate([np.arange(planted_queries),  # + a few of each other kind
                            np.arange(planted_queries, planted_queries + min(near, 8)),
                            np.arange(planted_queries + near, min(queries,
                                                                  planted_queries + near + 8))])
    return codes, query_codes, check


def _flip(rng: np.random.Generator, code: Codes, bits: int) -> Codes:
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(unpacked.size, size=bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def _brute_force(codes: Codes, queries: Codes, radius: int) -> Hits:
    """Every (query, id, distance) within `radius`, popcount over all codes, block by block."""
    words = codes.view(np.uint64)
    hits: Hits = set()
    for q, query in enumerate(queries.view(np.uint64)):
        for start in range(0, len(words), 1 << 20):
            block = words[start : start + (1 << 20)]
            distances = sum(np.bitwise_count(block[:, w] ^ query[w]).astype(np.int32)
                            for w in range(4))
            for row in np.flatnonzero(distances <= radius).tolist():
                hits.add((q, start + row, int(distances[row])))
    return hits


def _as_hits(result: Result) -> Hits:
    limits, distances, labels = result
    return {(q, int(labels[j]), int(distances[j]))
            for q in range(len(limits) - 1) for j in range(int(limits[q]), int(limits[q + 1]))}


def _build(name: str, codes: Codes, workdir: Path) -> Measured:
    gc.collect()
    before = _rss_bytes()
    started = time.perf_counter()
    if name == "flat":
        flat = faiss.IndexBinaryFlat(256)
        flat.add(codes)
        built = time.perf_counter() - started
        return Measured(name, lambda q: flat.range_search(q, RADIUS + 1), built,
                        (_rss_bytes() - before) / 2**20, codes.nbytes / 2**20)
    if name == "multihash":
        # As HMA builds it: 16 maps of 16 bits, nflip = t // 16, which makes it exact.
        multi = faiss.IndexBinaryMultiHash(256, 16, 16)
        multi.nflip = RADIUS // 16
        multi.add(codes)
        built = time.perf_counter() - started
        return Measured(name, lambda q: multi.range_search(q, RADIUS + 1), built,
                        (_rss_bytes() - before) / 2**20, None)
    index = MultiIndexHash(codes.copy())  # a copy, so that the RSS growth includes the codes
    built = time.perf_counter() - started
    rss = (_rss_bytes() - before) / 2**20
    started = time.perf_counter()
    index.save(workdir / "pdq.mih")
    saved = time.perf_counter() - started
    nbytes, tables = index.nbytes, index.tables
    del index
    gc.collect()
    started = time.perf_counter()
    loaded = MultiIndexHash.load(workdir / "pdq.mih")  # memory-mapped, as a worker loads it
    load_seconds = time.perf_counter() - started
    return Measured(name, lambda q: loaded.range_search(q, RADIUS), built, rss, nbytes / 2**20,
                    {"tables": tables, "substring_bits": loaded.layout[:, 1].tolist(),
                     "save_seconds": round(saved, 2), "load_seconds": round(load_seconds, 4),
                     "method_at_t": loaded.method(RADIUS)})


def run(count: int, kind: str, queries: int, batches: int, structures: Sequence[str],
        seed: int) -> dict[str, Any]:
    codes, query_codes, check = _make_data(count, kind, queries, seed)
    expected = _brute_force(codes, query_codes[check], RADIUS)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        built = [_build(name, codes, Path(tmp)) for name in structures]
        for measured in built:  # warm up: first touches of lazily built or mapped pages
            for q in range(min(10, queries)):
                measured.search(query_codes[q : q + 1])
        # Round-robin over blocks of 10 queries per structure, in rotating order, so that noise
        # on a shared machine hits every structure alike and the ratios stay fair; within a
        # block the process touches only the structure being timed. Warm: queries back to
        # back (after one untimed), as in a worker that does nothing but search. Cold: before
        # each query, a 64 MiB read (small pages, like a decoded image) evicts the CPU caches
        # and TLBs, and a 1 ms sleep yields the core, as between a worker's requests.
        evict = np.frombuffer(mmap.mmap(-1, 64 << 20), dtype=np.uint8)
        evict.sum(dtype=np.uint64)  # touch it once: fault it in outside the timings
        faults = {m.name: 0 for m in built}
        for samples in ("warm", "cold"):
            for b, low in enumerate(range(0, queries, 10)):
                for i in range(len(built)):
                    measured = built[(b + i) % len(built)]
                    if samples == "warm":  # untimed: the first query after a switch is cold
                        measured.search(query_codes[low : low + 1])
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    for q in range(low, min(queries, low + 10)):
                        one = query_codes[q : q + 1]
                        if samples == "cold":
                            evict.sum(dtype=np.uint64)
                            time.sleep(0.001)
                        started = time.perf_counter()
                        measured.search(one)
                        getattr(measured, samples).append(time.perf_counter() - started)
                    faults[measured.name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt \
                        - before
        for measured in built:
            measured.faults_per_query = faults[measured.name] / (2 * queries)
        for b, low in enumerate(range(0, batches, 5)):  # warm, blocks of 5 batches of 8
            for i in range(len(built)):
                measured = built[(b + i) % len(built)]
                measured.search(query_codes[:8])  # untimed, as above
                for batch in range(low, min(batches, low + 5)):
                    eight = query_codes[(8 * batch) % queries :][:8]
                    started = time.perf_counter()
                    measured.search(eight)
                    measured.batch8.append(time.perf_counter() - started)
        for measured in built:
            measured.exact = _as_hits(measured.search(query_codes[check])) == expected
        report = _report(count, kind, queries, built, len(check), len(expected))
        del built
        gc.collect()
    return report


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _report(count: int, kind: str, queries: int, built: list[Measured], checked: int,
            expected_hits: int) -> dict[str, Any]:
    warm = {m.name: statistics.median(m.warm) for m in built}
    cold = {m.name: statistics.median(m.cold) for m in built}
    structures: dict[str, Any] = {}
    for m in built:
        structures[m.name] = {
            "median_ms": _ms(warm[m.name]),
            "p99_ms": _ms(_p99(m.warm)),
            "speedup_vs_flat": round(warm["flat"] / warm[m.name], 2) if "flat" in warm else None,
            "cold_median_ms": _ms(cold[m.name]),
            "cold_p99_ms": _ms(_p99(m.cold)),
            "cold_speedup_vs_flat": (round(cold["flat"] / cold[m.name], 2)
                                     if "flat" in cold else None),
            "batch8_median_ms": _ms(statistics.median(m.batch8)) if m.batch8 else None,
            "faults_per_query": round(m.faults_per_query, 2),
            "build_seconds": round(m.build_seconds, 2),
            "rss_delta_mib": round(m.rss_delta_mib, 1),
            "index_mib": round(m.index_mib, 1) if m.index_mib is not None else None,
            "exact": m.exact,
            **m.extra,
        }
    return {"codes": count, "kind": kind, "radius": RADIUS, "queries": queries,
            "exactness_sample": {"queries": checked, "brute_force_hits": expected_hits},
            "structures": structures}


def _table(results: list[dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (f"{'codes':>10} {'kind':<9} {'structure':<9} │ {'warm: median':>12} {'p99':>7} "
              f"{'vs flat':>7} │ {'cold: median':>12} {'p99':>7} {'vs flat':>7} │ "
              f"{'8, warm':>10} │ {'build s':>7} {'RSS MiB':>7} {'index MiB':>9} {'exact':>5}")
    lines = [header, "─" * len(header)]
    for result in results:
        for name, s in result["structures"].items():
            lines.append(
                f"{result['codes']:>10} {result['kind']:<9} {name:<9} │ "
                f"{s['median_ms']:>9.3f} ms {s['p99_ms']:>7.3f} "
                f"{fmt(s['speedup_vs_flat'], '>6.1f')}x │ "
                f"{s['cold_median_ms']:>9.3f} ms {s['cold_p99_ms']:>7.3f} "
                f"{fmt(s['cold_speedup_vs_flat'], '>6.1f')}x │ "
                f"{fmt(s['batch8_median_ms'], '>7.3f')} ms │ "
                f"{s['build_seconds']:>7.2f} {s['rss_delta_mib']:>7.1f} "
                f"{fmt(s['index_mib'], '>9.1f')} {s['exact']!s:>5}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--structures", nargs="+", choices=STRUCTURES, default=list(STRUCTURES))
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--batches", type=int, default=25, help="batches of 8 timed")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--smoke", action="store_true",
                        help="1M codes, 100 queries, 10 batches: ~30 s, for CI")
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.queries, args.batches = [1_000_000], 100, 10
    common = ["--queries", str(args.queries), "--batches", str(args.batches),
              "--seed", str(args.seed), "--structures", *args.structures]
    if args.one:  # one data set, in a process of its own (see below)
        faiss.omp_set_num_threads(1)  # one core: FAISS's threads only slow single queries
        print(json.dumps(run(int(args.one[0]), args.one[1], args.queries, args.batches,
                             args.structures, args.seed)))
        return 0
    # Each data set in a fresh process: memory freed by one does not hide the next one's RSS
    # growth, and the peak stays one data set's.
    results = []
    for count in args.sizes:
        for kind in args.kinds:
            done = subprocess.run([sys.executable, __file__, "--one", str(count), kind, *common],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.splitlines()[-1]))
    print(_table(results))
    print(json.dumps({"benchmark": "pdq-range-search", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
