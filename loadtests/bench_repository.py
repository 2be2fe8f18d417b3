"""What a replica downloads from a bucket when only a small part of the snapshot changed.

    python loadtests/bench_repository.py --entries 1000000 --added 10
    python loadtests/bench_repository.py --entries 1000000 --added 10 --algorithm md5
    python loadtests/bench_repository.py --smoke                # 20,000 entries, seconds

Builds a PDQ bank shaped like a real list (make_snapshot.py), starts moto's S3 server on
127.0.0.1 (the local stand-in for S3), publishes the snapshot to it, and has a replica fetch and
load it from an empty cache. Then adds `--added` PDQ entries, republishes (a small change: a
layered version, the base's files plus a changes layer), and has the replica fetch the new
version: the bytes uploaded and downloaded the second time, against the snapshot's size, are the
cost of a small change. Side by side, the baseline: the same store state published in full (a
compaction, `publish --force`; what every publish did before layers), fetched by the same
replica. Per file, it says which ones changed. Prints one JSON object. (moto keeps objects in
memory: 1M entries need about 1 GB of RAM for it.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_repository.py`
    sys.path.insert(0, str(_ROOT))

import boto3  # noqa: E402
import numpy as np  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from hashsvc.home import DataHome  # noqa: E402
from hashsvc.snapshot import load, publish  # noqa: E402
from hashsvc.snapshot.s3 import S3Repository  # noqa: E402
from hashsvc.store import NewEntry, SqliteStore  # noqa: E402
from loadtests.make_snapshot import BANK, build_home  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _fetch(replica: S3Repository, version: str) -> dict[str, Any]:
    started = time.perf_counter()
    with replica.checkout(version) as (directory, stats):
        snapshot = load(directory)
    return {"version": version, "entries": snapshot.entry_count,
            "downloaded_objects": stats.downloaded_objects,
            "downloaded_bytes": stats.downloaded_bytes, "reused_objects": stats.reused_objects,
            "reused_bytes": stats.reused_bytes,
            "fetch_and_load_seconds": round(time.perf_counter() - started, 2)}


def _chunk_reuse(old: Path, new: Path, size: int) -> float:
    """The share of `new`'s bytes in fixed-size chunks that `old` also holds: what a bucket
    chunked that way (rather than by whole file) would spare a replica."""
    def chunks(directory: Path) -> dict[str, int]:
        found: dict[str, int] = {}
        for path in directory.iterdir():
            if path.name != "manifest.json":
                with path.open("rb") as handle:
                    while block := handle.read(size):
                        found[hashlib.sha256(block).hexdigest()] = len(block)
        return found
    before, after = chunks(old), chunks(new)
    return round(sum(n for d, n in after.items() if d in before) / sum(after.values()), 3)


def run(home: Path, entries: int, added: int, algorithm: str = "pdq", *,
        built: bool = False) -> dict[str, Any]:
    """`built`: `home` already holds a store made by make_snapshot.py (10M entries take ~15 min
    to build, so a home made once serves several runs); it gains the added entries."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    if not built:
        build_home(home, entries, publish_snapshot=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        url = "s3://bench/hashsvc"
        publisher = S3Repository(url, cache_dir=home / "publisher-cache", endpoint_url=endpoint)
        replica = S3Repository(url, cache_dir=home / "replica-cache", endpoint_url=endpoint)
        with SqliteStore(DataHome(home).store_path) as store:
            first = publish(store, publisher)
            initial = _fetch(replica, first.version)
            width = 32 if algorithm == "pdq" else 16
            codes = np.random.default_rng(99).integers(0, 256, size=(added, width),
                                                       dtype=np.uint8)
            store.add_entries(BANK, [NewEntry(algorithm, row.tobytes(), f"added-{i}")
                                     for i, row in enumerate(codes)])
            second = publish(store, publisher)
            changed = _fetch(replica, second.version)
            full = publish(store, publisher, force=True)
            compacted = _fetch(replica, full.version)
    finally:
        server.stop()
    versions = home / "replica-cache" / "versions"
    reuse = {f"{size >> 10}KiB": _chunk_reuse(versions / first.version, versions / full.version,
                                              size) for size in (1 << 20, 64 << 10)}
    old, new = first.manifest["files"], second.manifest["files"]
    snapshot_bytes = sum(entry["bytes"] for entry in full.manifest["files"].values())
    return {
        "entries": entries, "added": added, "added_algorithm": algorithm,
        "snapshot_files": len(new),
        "snapshot_bytes": snapshot_bytes,
        "first_publish": {"uploaded_objects": first.uploaded_objects,
                          "uploaded_bytes": first.uploaded_bytes,
                          "seconds": round(first.seconds, 2)},
        "first_fetch": initial,
        "second_publish": {"uploaded_objects": second.uploaded_objects,
                           "uploaded_bytes": second.uploaded_bytes,
                           "seconds": round(second.seconds, 2)},
        "second_layered": "layer" in second.manifest,
        "second_fetch": changed,
        "second_fetch_share_of_snapshot": round(changed["downloaded_bytes"] / snapshot_bytes, 6),
        "full_publish": {"uploaded_objects": full.uploaded_objects,
                         "uploaded_bytes": full.uploaded_bytes,
                         "seconds": round(full.seconds, 2)},
        "full_fetch": compacted,
        "full_fetch_share_of_snapshot": round(compacted["downloaded_bytes"] / snapshot_bytes, 3),
        "layered_over_full_downloaded_bytes": round(
            changed["downloaded_bytes"] / compacted["downloaded_bytes"], 6),
        "reusable_share_if_chunked": reuse,
        "unchanged_files": sorted(name for name, entry in new.items()
                                  if old.get(name, {}).get("sha256") == entry["sha256"]),
        "changed_files": {name: entry["bytes"] for name, entry in sorted(new.items())
                          if old.get(name, {}).get("sha256") != entry["sha256"]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--added", type=int, default=10)
    parser.add_argument("--algorithm", choices=("pdq", "md5"), default="pdq",
                        help="kind of the added entries (md5: the PDQ index stays the same)")
    parser.add_argument("--smoke", action="store_true", help="20,000 entries")
    parser.add_argument("--home", type=Path,
                        help="a home from make_snapshot.py to use instead of building one "
                             "(--entries is then only reported; its store gains the added entries)")
    args = parser.parse_args(argv)
    entries = 20_000 if args.smoke else args.entries
    if args.home is not None:
        print(json.dumps(run(args.home, entries, args.added, args.algorithm, built=True),
                         indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="hashsvc-bench-repo-") as scratch:
        result = run(Path(scratch) / "home", entries, args.added, args.algorithm)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
