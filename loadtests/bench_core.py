"""Benchmarks of the core, for the README's numbers (run on demand; CI runs `--smoke`).

    python loadtests/bench_core.py hash-speed        PDQ hashes/s per core on the reference images
    python loadtests/bench_core.py snapshot --entries 1000000
                                                     build time and size of an N-entry PDQ snapshot
    python loadtests/bench_core.py false-positives   PDQ pairs within 31 bits among photos-cc0

Each prints one JSON object. `--smoke` shrinks every workload to seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import Upload
from hashsvc.snapshot import load_current, publish
from hashsvc.store import NewEntry, SqliteStore

DATA = Path(os.environ.get("HASHSVC_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
REFERENCE = DATA / "pdq-reference" / "images"
PHOTOS = DATA / "photos-cc0" / "images"


def _reference_images() -> list[Path]:
    return sorted(p for p in REFERENCE.rglob("*") if p.suffix.lower() in {".jpg", ".png"})


def hash_speed(smoke: bool) -> dict[str, Any]:
    """Decode + PDQ on one core, repeated; median over rounds (the machine is shared and noisy)."""
    images = [(p, p.read_bytes()) for p in _reference_images()]
    rounds = 1 if smoke else 5
    per_round: list[float] = []
    megapixels = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        megapixels = 0.0
        for _path, data in images:
            upload = Upload(data)
            PDQ.compute(upload)
            megapixels += upload.decoded.pixels / 1e6
        per_round.append(time.perf_counter() - started)
    seconds = statistics.median(per_round)
    return {
        "benchmark": "pdq-hash-speed",
        "images": len(images),
        "megapixels": round(megapixels, 1),
        "median_seconds": round(seconds, 3),
        "hashes_per_second_per_core": round(len(images) / seconds, 1),
        "megapixels_per_second_per_core": round(megapixels / seconds, 1),
    }


def _clustered_codes(count: int, seed: int = 7) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Random PDQ-like codes, a quarter of them near-duplicates of others (as real lists are)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
    near = rng.choice(count, size=count // 4, replace=False)
    flips = rng.integers(0, 256, size=(len(near), 32), dtype=np.uint8)
    flips &= rng.integers(0, 256, size=flips.shape, dtype=np.uint8)  # ~1/4 bits: sparse
    flips &= rng.integers(0, 256, size=flips.shape, dtype=np.uint8)  # ~1/8 bits
    codes[near] = codes[rng.integers(0, count, size=len(near))] ^ (flips & 0x11)
    return codes


def snapshot_build(entries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = SqliteStore(root / "store.sqlite")
        store.create_bank("bench")
        codes = _clustered_codes(entries)
        started = time.perf_counter()
        with store.bulk_add("bench") as adder:
            for start in range(0, entries, 100_000):
                chunk = codes[start : start + 100_000]
                adder.add(NewEntry("pdq", row.tobytes(), f"id-{start + i}")
                          for i, row in enumerate(chunk))
        import_seconds = time.perf_counter() - started
        result = publish(store, root / "snapshots")
        size = sum(p.stat().st_size for p in result.path.iterdir())
        started = time.perf_counter()
        snapshot = load_current(root / "snapshots")
        load_seconds = time.perf_counter() - started
        store.close()
        return {
            "benchmark": "snapshot-build",
            "entries": entries,
            "distinct_hashes": len(snapshot.tables["pdq"]),
            "store_import_seconds": round(import_seconds, 2),
            "build_and_publish_seconds": round(result.seconds, 2),
            "snapshot_bytes": size,
            "snapshot_mib": round(size / 2**20, 1),
            "load_seconds_with_checksums": round(load_seconds, 2),
        }


def _hash_photo(path: Path) -> tuple[bytes, list[bytes]]:
    variants = PDQ.compute_dihedral(Upload(path.read_bytes()))
    return variants[0].value, [v.value for v in variants]


def false_positives(limit: int | None, threshold: int = PDQ.default_threshold) -> dict[str, Any]:
    """Pairs of distinct photos within `threshold`: identity queries, and dihedral queries."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:limit]
    started = time.perf_counter()
    with multiprocessing.get_context("forkserver").Pool() as pool:
        hashed = pool.map(_hash_photo, photos, chunksize=16)
    hash_seconds = time.perf_counter() - started
    identity = np.frombuffer(b"".join(h for h, _ in hashed), dtype=np.uint8).reshape(-1, 32)
    index = faiss.IndexBinaryFlat(256)
    index.add(identity)
    faiss.omp_set_num_threads(1)

    def pairs(queries: np.ndarray[Any, Any], owners: np.ndarray[Any, Any]) -> set[tuple[int, int]]:
        limits, _distances, labels = index.range_search(queries, threshold + 1)
        found: set[tuple[int, int]] = set()
        for q in range(len(queries)):
            for label in labels[limits[q] : limits[q + 1]].tolist():
                a, b = int(owners[q]), int(label)
                if a != b:
                    found.add((min(a, b), max(a, b)))
        return found

    plain = pairs(identity, np.arange(len(photos)))
    all_variants = np.frombuffer(
        b"".join(b"".join(variants) for _, variants in hashed), dtype=np.uint8
    ).reshape(-1, 32)
    dihedral = pairs(all_variants, np.repeat(np.arange(len(photos)), 8))
    total_pairs = len(photos) * (len(photos) - 1) // 2
    return {
        "benchmark": "pdq-false-positives",
        "photos": len(photos),
        "pairs": total_pairs,
        "threshold": threshold,
        "false_positive_pairs_identity": len(plain),
        "false_positive_pairs_with_dihedral_queries": len(dihedral),
        "false_positive_rate_identity": len(plain) / total_pairs,
        "false_positive_rate_dihedral": len(dihedral) / total_pairs,
        "hash_seconds": round(hash_seconds, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=("hash-speed", "snapshot", "false-positives", "all"))
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="tiny workloads, for CI")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    if args.benchmark in ("hash-speed", "all"):
        results.append(hash_speed(args.smoke))
    if args.benchmark in ("snapshot", "all"):
        results.append(snapshot_build(2_000 if args.smoke else args.entries))
    if args.benchmark in ("false-positives", "all"):
        results.append(false_positives(60 if args.smoke else None))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
