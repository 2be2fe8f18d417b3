"""How soon an AdminService change reaches scans on every worker (no publish, no rebuild).

    python loadtests/bench_freshness.py --target 127.0.0.1:50051 --rounds 20

Needs an admin key ($HASHSVC_API_KEY). Each round adds one random PDQ hash to a scratch bank and
starts the clock when AddEntries returns; it then scans through `--channels` separate connections
(a multi-worker server gives each connection to one worker) until every one of them matches, and
records that time. Then the same for disabling the entry until no connection matches. Prints
median, p95 and max. The issue's reference figure for HMA on this machine is 30-95 s, since HMA
rebuilds its index; hashsvc applies store changes as an in-memory delta.
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
            timeout: float = 30.0) -> dict[str, Any]:
    admin = Client(target, api_key=api_key)
    clients = [Client(target, api_key=api_key) for _ in range(channels)]
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
            "add_visible": summary(added), "disable_visible": summary(disabled)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("HASHSVC_SERVER", "127.0.0.1:50051"))
    parser.add_argument("--api-key", default=os.environ.get("HASHSVC_API_KEY"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="3 rounds, for CI")
    args = parser.parse_args(argv)
    host = args.target.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        print("bench_freshness: only loopback targets are allowed", file=sys.stderr)
        return 2
    result = measure(args.target, args.api_key, 3 if args.smoke else args.rounds, args.channels)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
