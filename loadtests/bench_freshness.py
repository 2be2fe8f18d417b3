"""How soon an AdminService change reaches scans on every worker (no publish, no rebuild).

    python loadtests/bench_freshness.py --target 127.0.0.1:50051 --rounds 20

Needs an admin key ($HASHSVC_API_KEY). Each round adds one random PDQ hash to a scratch bank and
starts the clock when AddEntries returns; it then scans through `--channels` separate connections
(a multi-worker server gives each connection to one worker) until every one of them matches, and
records that time. Then the same for disabling the entry until no connection matches. Prints
median, p95 and max. The issue's reference figure for HMA on this machine is 30-95 s, since HMA
rebuilds its index; hashsvc applies store changes as an in-memory delta.

    python loadtests/bench_freshness.py --replicas 3 --postgres --rounds 20

starts the scale-out topology itself on loopback instead (tests/scale_out.py): a throwaway
PostgreSQL server (Debian's binaries), moto's S3 server, one admin process and `--replicas` scan
replicas, each its own process polling the shared store. Changes are made on the admin, and
each round waits until `--channels` connections to EVERY replica see them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from hashsvc_client import AlreadyExists, Client, NotFound

BANK = "freshness-bench"


def _visible_everywhere(clients: list[Client], code: bytes, want: bool,
                        timeout: float) -> float:
    started = time.perf_counter()
    pending = list(clients)
    while pending:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"change not visible on {len(pending)} connection(s) in {timeout}s")
        pending = [c for c in pending if _matches(c, code) != want]
    return time.perf_counter() - started


def _matches(client: Client, code: bytes) -> bool:
    try:
        return client.scan_hashes([("pdq", code)], banks=[BANK]).matched
    except NotFound:  # this worker has not seen the new scratch bank yet: not visible either
        return False


def measure(target: str, api_key: str | None, rounds: int, channels: int,
            timeout: float = 30.0, scan_targets: Sequence[str] = ()) -> dict[str, Any]:
    """Changes made through `target`; watched on `channels` connections to each of
    `scan_targets` (default: `target` itself)."""
    admin = Client(target, api_key=api_key)
    clients = [Client(scan, api_key=api_key) for scan in (scan_targets or [target])
               for _ in range(channels)]
    try:
        with contextlib.suppress(AlreadyExists):
            admin.create_bank(BANK, description="scratch bank for bench_freshness.py")
        added: list[float] = []
        disabled: list[float] = []
        for _ in range(rounds):
            code = os.urandom(32)
            admin.add_entries(BANK, [(("pdq", code), None, None)])
            added.append(_visible_everywhere(clients, code, True, timeout))
            admin.set_entries_disabled(BANK, hashes=[("pdq", code)], reason="bench")
            disabled.append(_visible_everywhere(clients, code, False, timeout))
        admin.delete_bank(BANK)
    finally:
        for client in (admin, *clients):
            client.close()

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1000, 1),
                "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
                "max_ms": round(ordered[-1] * 1000, 1)}

    return {"benchmark": "freshness", "rounds": rounds, "channels": channels,
            "replicas": len(scan_targets) or None,
            "add_visible": summary(added), "disable_visible": summary(disabled)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("HASHSVC_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--api-key", default=os.environ.get("HASHSVC_API_KEY"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="3 rounds, for CI")
    parser.add_argument("--replicas", type=int, default=0,
                        help="start the scale-out topology with this many scan replicas "
                        "(needs --postgres) and measure on all of them")
    parser.add_argument("--postgres", action="store_true",
                        help="with --replicas: the store is a throwaway PostgreSQL server")
    parser.add_argument("--reload-interval", type=float, default=0.1,
                        help="with --replicas: each replica's --reload-interval, how often it "
                        "reads the store's revision (default 0.1, the server's default)")
    args = parser.parse_args(argv)
    rounds = 3 if args.smoke else args.rounds
    if args.replicas:
        if not args.postgres:
            print("bench_freshness: --replicas needs --postgres (replicas share the store)",
                  file=sys.stderr)
            return 2
        print(json.dumps(_measure_scaled_out(args.replicas, rounds, args.channels,
                                             args.reload_interval)))
        return 0
    host = args.target.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        print("bench_freshness: only loopback targets are allowed", file=sys.stderr)
        return 2
    result = measure(args.target, args.api_key, rounds, args.channels)
    print(json.dumps(result))
    return 0


def _measure_scaled_out(replicas: int, rounds: int, channels: int,
                        reload_interval: float) -> dict[str, Any]:
    """`measure` on a topology started here: PostgreSQL, moto's S3, one admin, N replicas."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed
    from tests.postgres_server import find_binaries, running_postgres
    from tests.s3_server import aws_credentials, moto_server
    from tests.scale_out import running_cluster

    bin_dir = find_binaries()
    if bin_dir is None:
        raise SystemExit("bench_freshness: PostgreSQL not found: apt-get install postgresql")
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as root, \
            running_postgres(bin_dir) as postgres, aws_credentials(), \
            moto_server() as endpoint, \
            running_cluster(postgres.new_database(), endpoint, Path(root), replicas,
                            ("--reload-interval", str(reload_interval))) as cluster:
        with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
            version = admin.publish(force=True).version
        for replica in cluster.replicas:  # each ready: serving that snapshot
            deadline = time.monotonic() + 120
            while not any(r.get("message") == "serving snapshot" and r["version"] == version
                          for r in replica.records()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {replica.target} never served {version}")
                time.sleep(0.05)
        return {**measure(cluster.admin.target, cluster.admin_key, rounds, channels,
                          scan_targets=[r.target for r in cluster.replicas]),
                "store": "postgresql", "snapshots": "s3 (moto)",
                "reload_interval": reload_interval}


if __name__ == "__main__":
    sys.exit(main())
