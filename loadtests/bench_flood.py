"""The flood guard on a replayed stream: when it quarantines, what it wrongly quarantines, and
what it costs a scan, side by side with the guard off, in one command.

    python loadtests/bench_flood.py --scans 30000 --window 10000 --rounds 2

Builds a scratch home whose bank holds the PDQ hashes of `--known` real photos from
$HASHSVC_SHARED_DATA/photos-cc0, then replays one seeded stream
of ScanHashes calls against the real server (tests/server_process.py, one worker) from one
client, in order, so that every run sees the same stream (the bank's thresholds:
`--min-matches`, `--factor`, by default the product's defaults):

- the normal part: `--known-share` of uploads are known photos, drawn with Zipf popularity (a
  few are common, most rare: the popular ones are what a guard could wrongly quarantine), the
  rest are `--unknown` other photos that match nothing;
- from `--onset` of the way through, one known photo that was rare so far (the hot entry) is
  also uploaded with probability `--hot-share`: the flood.

Reported: the scan at which the hot entry was first answered QUARANTINED and after how many of
its matches since the onset; entries quarantined that are not the hot one (false quarantines);
and the server's CPU seconds per scan (its whole process tree, from /proc) with the guard on
(`--flood-window WINDOW`) and off (`--flood-window 0`), the runs alternated `--rounds` times,
as a ratio; and, since on a busy machine that ratio is within its noise, the CPU time of
FloodGuard.screen alone on the same stream, in this process. ScanHashes is the cheap path (no
decode, no hashing), so the guard's share of a scan is larger there than in any ScanImage: the
worst case. Say the load (`uptime`) with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashsvc_client import Client
from hashsvc_client.v1 import types_pb2

from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import Upload
from hashsvc.home import DataHome
from hashsvc.matching.matcher import Match
from hashsvc.scanner import ScanResult
from hashsvc.server.flood_guard import FloodGuard
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from hashsvc.store.flood import DEFAULT_SETTINGS, FloodSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not installed
from tests.server_process import ServerProcess

BANK = "flood-bench"
QUARANTINED = types_pb2.MATCH_STATUS_QUARANTINED
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stream:
    uploads: list[bytes]  # PDQ hashes, one per scan
    hot: bytes
    onset: int  # index of the first scan of the flood part


def _photos(count: int) -> list[bytes]:
    data = Path(os.environ.get("HASHSVC_SHARED_DATA", "/work/shared/data"))
    paths = sorted((data / "photos-cc0" / "images").glob("*.jpg"))[:count]
    if len(paths) < count:
        raise SystemExit(f"need {count} photos in {data}/photos-cc0/images, found {len(paths)}")
    hashes = [PDQ.compute(Upload(path.read_bytes())).value for path in paths]
    return list(dict.fromkeys(hashes))  # a duplicate photo would be one entry, not two


def make_stream(known: list[bytes], unknown: list[bytes], scans: int, known_share: float,
                onset: float, hot_share: float, seed: int) -> Stream:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(known))]  # Zipf, s = 1
    hot = known[-1]  # the rarest: it floods from the onset
    start = int(scans * onset)
    uploads = []
    for index in range(scans):
        if index >= start and rng.random() < hot_share:
            uploads.append(hot)
        elif rng.random() < known_share:
            uploads.append(rng.choices(known, weights)[0])
        else:
            uploads.append(rng.choice(unknown))
    return Stream(uploads, hot, start)


def busiest_normal(stream: Stream, known: list[bytes], window: int) -> int:
    """The most matches any entry but the hot one has in any `window` consecutive scans: how
    close the normal traffic comes to `min_matches`."""
    counts: dict[bytes, int] = {}
    known_set = set(known) - {stream.hot}
    busiest = 0
    for index, upload in enumerate(stream.uploads):
        if index >= window and (old := stream.uploads[index - window]) in known_set:
            counts[old] -= 1
        if upload in known_set:
            counts[upload] = counts.get(upload, 0) + 1
            busiest = max(busiest, counts[upload])
    return busiest


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its descendants, from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def replay(home: Path, stream: Stream, window: int) -> dict[str, Any]:
    flags = ("--flood-window", str(window), "--metrics-listen", "")
    (home / "keys.toml").unlink(missing_ok=True)  # each server gets fresh keys
    with ServerProcess(home, *flags) as server, Client(
            server.target, api_key=server.keys["scanner"]) as client:
        client.scan_hashes([("pdq", stream.uploads[0])])  # connected and warm
        cpu_before, started = _cpu_seconds(server.pid), time.perf_counter()
        hot_matches = 0
        quarantined_at: int | None = None
        hot_before: int | None = None
        false_quarantines: set[int] = set()
        hot_entry: int | None = None
        for index, upload in enumerate(stream.uploads):
            result = client.scan_hashes([("pdq", upload)])
            for match in result.matches:
                if upload == stream.hot:
                    hot_entry = match.entry_id
                    hot_matches += index >= stream.onset
                if match.status != QUARANTINED:
                    continue
                if upload == stream.hot and quarantined_at is None:
                    quarantined_at, hot_before = index, hot_matches
                elif upload != stream.hot:
                    false_quarantines.add(match.entry_id)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(server.pid) - cpu_before
    return {"window": window, "scans": len(stream.uploads), "wall_seconds": round(seconds, 2),
            "server_cpu_seconds": round(cpu, 3),
            "server_cpu_us_per_scan": round(cpu / len(stream.uploads) * 1e6, 1),
            "hot_entry": hot_entry, "onset_scan": stream.onset,
            "quarantined_at_scan": quarantined_at,
            "hot_matches_until_quarantined": hot_before,
            "hot_matches_after_onset": hot_matches,
            "false_quarantines": sorted(false_quarantines)}


def guard_alone(stream: Stream, known: list[bytes], window: int, repeats: int = 3) -> float:
    """CPU microseconds per scan of FloodGuard.screen itself on the same stream, in this
    process (the best of `repeats`): what the server's figures hold, without their noise."""
    ids = {code: index + 1 for index, code in enumerate(known)}
    results = [[Match(bank=BANK, bank_kind="match", entry_id=ids[code], external_id=None,
                      algorithm="pdq", distance=0, threshold=31, query_transform="identity",
                      tags=(), metadata=None)] if code in ids else []
               for code in stream.uploads]
    best = float("inf")
    for _ in range(repeats):
        guard = FloodGuard(window)
        scans = [ScanResult("bench", [], matches) for matches in results]
        started = time.process_time()
        for result in scans:
            guard.screen(result)
        best = min(best, time.process_time() - started)
    return best / len(stream.uploads) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=30_000)
    parser.add_argument("--window", type=int, default=10_000, help="the guard's flood_window")
    parser.add_argument("--known", type=int, default=300, help="photos in the bank")
    parser.add_argument("--unknown", type=int, default=300, help="photos that match nothing")
    parser.add_argument("--known-share", type=float, default=0.05)
    parser.add_argument("--onset", type=float, default=2 / 3, help="where the flood starts")
    parser.add_argument("--hot-share", type=float, default=0.02)
    parser.add_argument("--min-matches", type=int, default=DEFAULT_SETTINGS.min_matches,
                        help="the bank's flood-guard min_matches")
    parser.add_argument("--factor", type=float, default=DEFAULT_SETTINGS.factor,
                        help="the bank's flood-guard factor")
    parser.add_argument("--rounds", type=int, default=1, help="on/off pairs, alternated")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    photos = _photos(args.known + args.unknown)
    known, unknown = photos[:args.known], photos[args.known:]
    stream = make_stream(known, unknown, args.scans, args.known_share, args.onset,
                         args.hot_share, args.seed)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as scratch:
        home = DataHome(Path(scratch))
        with SqliteStore(home.store_path) as store:
            store.create_bank(BANK)
            store.set_flood_guard(BANK, FloodSettings(args.min_matches, args.factor))
            store.add_entries(BANK, [NewEntry("pdq", code, f"photo-{i}")
                                     for i, code in enumerate(known)])
            publish(store, home.snapshots_dir)
        for _ in range(args.rounds):
            for window in (args.window, 0):
                runs.append(replay(home.root, stream, window))
                print(json.dumps(runs[-1]), file=sys.stderr)
    on = [r for r in runs if r["window"]]
    off = [r for r in runs if not r["window"]]
    on_cpu = sum(r["server_cpu_seconds"] for r in on)
    off_cpu = sum(r["server_cpu_seconds"] for r in off)
    report = {"guard_on": on[-1], "cpu_ratio_on_to_off": round(on_cpu / off_cpu, 3),
              "cpu_us_per_scan_on": round(on_cpu / (len(on) * args.scans) * 1e6, 1),
              "cpu_us_per_scan_off": round(off_cpu / (len(off) * args.scans) * 1e6, 1),
              "guard_alone_us_per_scan": round(guard_alone(stream, known, args.window), 2),
              "busiest_normal_entry_in_a_window": busiest_normal(stream, known, args.window),
              "rounds": args.rounds, "load_average": os.getloadavg()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        hot = on[-1]
        print(f"stream: {args.scans:,} ScanHashes, flood from scan {hot['onset_scan']:,} "
              f"({args.hot_share:.0%} of uploads), window {args.window:,} scans")
        print(f"quarantined at scan {hot['quarantined_at_scan']}, after "
              f"{hot['hot_matches_until_quarantined']} of its matches since the onset; "
              f"false quarantines: {len(hot['false_quarantines'])} (the busiest other entry "
              f"had {report['busiest_normal_entry_in_a_window']} matches in a window)")
        print(f"server CPU per scan: guard on {report['cpu_us_per_scan_on']} us, off "
              f"{report['cpu_us_per_scan_off']} us: ratio {report['cpu_ratio_on_to_off']} "
              f"({args.rounds} round(s); load {report['load_average'][0]:.1f})")
        print(f"the guard alone (FloodGuard.screen in this process, same stream): "
              f"{report['guard_alone_us_per_scan']} us per scan")
    return 0


if __name__ == "__main__":
    sys.exit(main())
