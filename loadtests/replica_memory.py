"""Memory of one scan replica serving a snapshot, for sizing its Kubernetes requests and limits.

    python loadtests/make_snapshot.py --home /tmp/hashsvc-1m --entries 1000000
    python loadtests/replica_memory.py --home /tmp/hashsvc-1m --workers 2

Starts `hashsvc serve --role scan` on the home (on loopback, --insecure-no-auth), drives a
bounded number of hash scans (half listed codes, half random ones, which probe the index widely)
and photo scans (2 MP JPEGs) over several connections, so that every worker serves some, then
reads /proc for every process of the replica. Prints one JSON object:
RSS, private (anonymous) and proportional (PSS: shared pages split between the processes that map
them) memory per process, and the replica's total PSS, which is what it costs a node. The
snapshot's pages are shared by all workers and may all be resident in time: add the snapshot's
size for an upper bound (README "Kubernetes").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from hashsvc_client import Client  # noqa: E402

from hashsvc.snapshot import current_version, version_dir  # noqa: E402
from loadtests.loadgen import PHOTOS, make_jpeg  # noqa: E402
from loadtests.make_snapshot import KNOWN_FILE  # noqa: E402
from loadtests.processes import descendants  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402


def memory_mib(pid: int) -> dict[str, int]:
    """RSS, its private part and PSS of one process, from /proc (Linux), in MiB."""
    def fields(name: str) -> dict[str, int]:
        lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        return {key: int(rest.split()[0]) // 1024 for key, _, rest in
                (line.partition(":") for line in lines) if rest.strip().endswith("kB")}

    status, rollup = fields("status"), fields("smaps_rollup")
    return {"rss": status["VmRSS"], "peak_rss": status["VmHWM"], "private": rollup["Anonymous"],
            "pss": rollup["Pss"]}


def measure(home: Path, workers: int, hash_scans: int, photo_scans: int,
            connections: int) -> dict[str, Any]:
    listed = [line.strip() for line in (home / KNOWN_FILE).read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    # Typical uploads: photos upscaled to 2 MP JPEGs (the test photos are 0.2 MP).
    photos = [make_jpeg(photo, megapixels=2).data for photo in sorted(PHOTOS.glob("*.jpg"))[
        :photo_scans]]
    with ServerProcess(home, "--role", "scan", "--workers", str(workers),
                       "--insecure-no-auth", keys={}) as server:
        clients = [Client(server.target) for _ in range(connections)]
        try:
            for index in range(hash_scans):
                code: str | bytes = listed[index % len(listed)] if index % 2 else os.urandom(32)
                clients[index % connections].scan_hashes([("pdq", code)])
            for index, photo in enumerate(photos):
                clients[index % connections].scan_image(photo)
        finally:
            for client in clients:
                client.close()
        processes = {pid: memory_mib(pid) for pid in [server.pid, *descendants(server.pid)]}
    version = current_version(home / "snapshots")
    assert version is not None, f"{home} has no snapshot: build it with make_snapshot.py"
    snapshot = version_dir(home / "snapshots", version)
    return {
        "workers": workers, "hash_scans": hash_scans, "photo_scans": len(photos),
        "connections": connections, "processes": processes,
        "replica_pss_mib": sum(p["pss"] for p in processes.values()),
        "snapshot_mib": round(sum(f.stat().st_size for f in snapshot.iterdir()) / 2**20, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="a home from make_snapshot.py")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hash-scans", type=int, default=4000)
    parser.add_argument("--photo-scans", type=int, default=80)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.home, args.workers, args.hash_scans, args.photo_scans,
                             args.connections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
