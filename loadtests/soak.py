"""Mixed load for N minutes (or N calls) on a multi-worker server, with every process's RSS.

    python loadtests/soak.py --minutes 10 --workers 2 --entries 1000000 --json soak.json
    python loadtests/soak.py --calls 1500                    # CI: bounded by calls, not time

On a fresh home (make_snapshot.py), a real `hashsvc serve --workers N` gets at once:
- loadgen rounds (each of `--round-calls` calls, concurrency 4) alternating ScanImage, ScanHashes
  (batches of 10, half of them known hashes) and ScanImages streams;
- HashImage calls, one at a time;
- admin changes, one at a time: AddEntries, SetEntriesDisabled and RemoveEntries of entries it
  added itself, so that the served delta keeps changing.
The run stops at `--calls` calls or `--minutes`, whichever comes first. The RSS of the
supervisor and of each worker is sampled every `--sample-seconds` and after every loadgen round.

Guarantees (exit 1 if broken): no call fails, and no process's RSS grows by more than
`--max-growth-mb` between the end of the warm-up (the first `--warmup-share` of the calls) and
the end. Prints a table and one JSON object (also `--json PATH`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/soak.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from hashsvc_client import Client  # noqa: E402
from hashsvc_client.errors import HashsvcClientError  # noqa: E402

from loadtests import loadgen, processes  # noqa: E402
from loadtests.make_snapshot import BANK, KNOWN_FILE, build_home  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

LOADGEN_MODES = ("scan-image", "scan-hashes", "stream")


@dataclass
class Soak:
    """Shared by the load threads: the budget, the counts and the RSS samples."""

    max_calls: int
    stop_at: float
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def done(self) -> bool:
        if self.total >= self.max_calls or time.monotonic() >= self.stop_at:
            self.stop.set()
        return self.stop.is_set()

    def record(self, kind: str, calls: int, errors: dict[str, int]) -> None:
        with self.lock:
            self.calls[kind] += calls
            for code, count in errors.items():
                self.errors[f"{kind}:{code}"] += count

    def sample(self, pids: dict[int, str]) -> None:
        rss = {role: (processes.rss_kb(pid) or 0) / 1024 for pid, role in pids.items()}
        with self.lock:
            self.samples.append({"calls": self.total, "rss_mb": rss})


def process_roles(server: ServerProcess) -> dict[int, str]:
    """The server's processes by role: supervisor, workers, multiprocessing's helpers."""
    children = sorted(processes.descendants(server.pid))
    roles = {server.pid: "supervisor" if children else "server"}
    helpers = [pid for pid in children if "multiprocessing" in processes.command_line(pid)
               and "spawn_main" not in processes.command_line(pid)]
    workers = [pid for pid in children if pid not in helpers]
    roles.update({pid: f"worker-{i + 1}" for i, pid in enumerate(workers)})
    roles.update({pid: f"helper-{i + 1}" for i, pid in enumerate(helpers)})
    return roles


def bounded_round(server: ServerProcess, mode: str, calls: int, image: loadgen.TestImage,
                  known: list[str]) -> dict[str, Any]:
    """One loadgen run of `calls` calls (4 in flight, 4 connections), bounded by count: its
    duration is only a hang guard. ScanHashes batches hold 10 hashes, half of them listed."""
    settings = loadgen.Settings(
        mode=mode, target=server.target, api_key=server.keys["scanner"], concurrency=4,
        channels=4, duration=3600.0, warmup=0.0, max_requests=calls, calls=calls, batch=10,
        stream_window=16, timeout=60.0, image=None if mode == "scan-hashes" else image,
        known_hashes=known, match_fraction=0.5)
    return asyncio.run(loadgen.run(settings))


def loadgen_rounds(soak: Soak, server: ServerProcess, home: Path, round_calls: int) -> None:
    known = loadgen.read_known_hashes(home / KNOWN_FILE)
    image = loadgen.make_jpeg(loadgen.default_photo())
    rounds = 0
    while not soak.done():
        mode = LOADGEN_MODES[rounds % len(LOADGEN_MODES)]
        calls = max(1, min(round_calls, soak.max_calls - soak.total))
        result = bounded_round(server, mode, calls, image, known)
        soak.record(mode, result["issued_total"], result["errors"])
        rounds += 1


def one_at_a_time(soak: Soak, server: ServerProcess, kind: str, seed: int) -> None:
    """HashImage calls, or admin changes on entries this thread added itself."""
    rng = random.Random(seed)
    image = loadgen.make_jpeg(loadgen.default_photo()).data
    key = server.keys["admin" if kind == "admin" else "scanner"]
    added: list[str] = []
    with Client(server.target, api_key=key, timeout=60) as client:
        while not soak.done():
            step = rng.choice(("add", "disable", "remove")) if added else "add"
            try:
                if kind == "hash-image":
                    client.hash_image(image)
                elif step == "add":
                    ids = [f"soak-{rng.getrandbits(64):x}" for _ in range(10)]
                    client.add_entries(BANK, [(("pdq", rng.randbytes(32).hex()), i, {"n": n})
                                              for n, i in enumerate(ids)])
                    added.extend(ids)
                elif step == "disable":
                    client.set_entries_disabled(BANK, external_ids=rng.sample(added, 3),
                                                reason="soak")
                else:
                    gone = added[-5:]
                    del added[-5:]
                    client.remove_entries(BANK, external_ids=gone)
                soak.record(kind, 1, {})
            except HashsvcClientError as err:
                soak.record(kind, 1, {err.code.name: 1})


def summarise(soak: Soak, warmup_share: float, max_growth: float) -> dict[str, Any]:
    samples = soak.samples
    warm_at = soak.total * warmup_share
    warm = next((s for s in samples if s["calls"] >= warm_at), samples[-1])
    last = samples[-1]
    per_process = {}
    for role in last["rss_mb"]:
        series = [s["rss_mb"].get(role, 0.0) for s in samples]
        per_process[role] = {
            "start_mb": round(samples[0]["rss_mb"].get(role, 0.0), 1),
            "after_warmup_mb": round(warm["rss_mb"].get(role, 0.0), 1),
            "end_mb": round(last["rss_mb"][role], 1),
            "max_mb": round(max(series), 1),
            "growth_after_warmup_mb": round(last["rss_mb"][role]
                                            - warm["rss_mb"].get(role, 0.0), 1),
        }
    worst = max((p["growth_after_warmup_mb"] for p in per_process.values()), default=0.0)
    return {"calls": dict(soak.calls), "total_calls": soak.total, "errors": dict(soak.errors),
            "error_count": sum(soak.errors.values()), "samples": len(samples),
            "processes": per_process, "worst_growth_mb": worst,
            "max_growth_mb": max_growth}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, help="run this long (default: until --calls)")
    parser.add_argument("--calls", type=int, help="stop after this many calls (default: "
                        "none if --minutes is given, else 2,000)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--entries", type=int, default=100_000,
                        help="PDQ entries in the served snapshot (default %(default)s)")
    parser.add_argument("--round-calls", type=int, default=300,
                        help="calls per loadgen round (default %(default)s)")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-share", type=float, default=0.2,
                        help="share of the calls before RSS growth is measured "
                             "(default %(default)s)")
    parser.add_argument("--max-growth-mb", type=float, default=64.0,
                        help="RSS growth after the warm-up that breaks the guarantee "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report object here")
    args = parser.parse_args(argv)
    if args.calls is None and args.minutes is None:
        args.calls = 2_000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stop_at = started + args.minutes * 60 if args.minutes else float("inf")
    soak = Soak(args.calls or sys.maxsize, stop_at)
    with tempfile.TemporaryDirectory(prefix="hashsvc-soak-") as scratch:
        home = Path(scratch) / "home"
        build_home(home, args.entries, known_sample=200, seed=args.seed)
        with ServerProcess(home, "--workers", str(args.workers)) as server:
            roles = process_roles(server)
            soak.sample(roles)
            threads = [threading.Thread(target=loadgen_rounds, daemon=True,
                                        args=(soak, server, home, args.round_calls)),
                       *(threading.Thread(target=one_at_a_time, daemon=True,
                                          args=(soak, server, kind, args.seed + i))
                         for i, kind in enumerate(("hash-image", "admin")))]
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                soak.stop.wait(args.sample_seconds)
                soak.done()
                soak.sample(roles)
                for thread in threads:
                    thread.join(timeout=0.01)
            soak.sample(roles)
    result = {"tool": "soak", "workers": args.workers, "entries": args.entries,
              "minutes": round((time.monotonic() - started) / 60, 2),
              **summarise(soak, args.warmup_share, args.max_growth_mb)}
    broken = result["error_count"] > 0 or result["worst_growth_mb"] > args.max_growth_mb
    workers = {r: p for r, p in result["processes"].items() if r.startswith("worker")}
    result["figures"] = [
        f"soak: {result['total_calls']:,} calls in {result['minutes']} min on {args.workers} "
        f"workers ({', '.join(f'{k} {v:,}' for k, v in sorted(result['calls'].items()))}), "
        f"{result['error_count']} failed",
        "soak: RSS per worker after warm-up -> end: " + ", ".join(
            f"{p['after_warmup_mb']:.0f} -> {p['end_mb']:.0f} MB" for p in workers.values()),
        f"soak: worst RSS growth after warm-up {result['worst_growth_mb']:+.1f} MB",
    ]
    for role, p in result["processes"].items():
        print(f"  {role:<11} start {p['start_mb']:7.1f} MB  after warm-up "
              f"{p['after_warmup_mb']:7.1f}  end {p['end_mb']:7.1f}  max {p['max_mb']:7.1f}  "
              f"growth {p['growth_after_warmup_mb']:+.1f}")
    if result["errors"]:
        print(f"  errors: {json.dumps(result['errors'])}")
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n".join(result["figures"]))
    print(f"soak: {'GUARANTEE BROKEN' if broken else 'guarantees kept'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
