"""Kill imports and publishes at random points, publish under load, serve bad snapshots.

    python loadtests/chaos.py --entries 1000000 --import-kills 10 --publish-kills 17 \
        --publishes 24 --seed 1 --json chaos.json

On a fresh data home of `--entries` PDQ entries (built by make_snapshot.py), each section checks
one guarantee and records every check:

- imports: `indexer import` of a new `--import-lines` list (large enough for the parser
  process) SIGKILLed after a seeded random delay, or (every other kill) once its parser
  process has worked for half a CPU second. Then the store passes `PRAGMA
  integrity_check`, holds either none or all of the list, `current` loads, and no process of
  the import is left running after `--orphan-grace` seconds.
- publishes: `indexer publish` SIGKILLed at a seeded random point: after a delay, when its
  temporary directory appears, or as soon as it switched `current` (while it removes old
  versions). Then `current` loads and nothing is left running; at the end one more publish must
  leave only complete versions (a half-deleted version directory is planted first).
- load: `--publishes` publishes while loadgen keeps ScanHashes and ScanImage calls in flight
  against a 2-worker server, in rounds of bounded call counts: 0 failed calls, and every
  worker ends up serving the last version.
- bad snapshots: `current` pointed at a broken copy of the good snapshot (truncated array,
  manifest without `files`, manifest as a JSON array, fewer rows than the manifest with
  checksums that match, and an intact copy under another name). A broken one must be refused
  and counted in hashsvc_snapshot_load_failures_total while known hashes keep matching; the
  intact copy must be loaded (or refused) once, not in a loop; pointing `current` back must
  serve the good one.

Prints the checks and one JSON object (also `--json PATH`); exits 1 if any check failed.
Processes are killed only by the ids this tool started them with.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/chaos.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from hashsvc_client import Client  # noqa: E402

from hashsvc.errors import SnapshotError  # noqa: E402
from hashsvc.snapshot import current_version, load_current  # noqa: E402
from hashsvc.store import NewEntry, SqliteStore  # noqa: E402
from loadtests import loadgen, processes  # noqa: E402
from loadtests.chaos_snapshots import BAD_SNAPSHOTS, bad_snapshots  # noqa: E402
from loadtests.checks import Report, serve, wait_for  # noqa: E402
from loadtests.fuzz.inprocess import entry_count, integrity  # noqa: E402
from loadtests.make_snapshot import BANK, KNOWN_FILE, build_home  # noqa: E402
from loadtests.soak import bounded_round  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402


def indexer(home: Path, *args: str) -> subprocess.Popen[bytes]:
    """The real CLI in its own session, so that whatever it leaves behind can be found."""
    return subprocess.Popen([sys.executable, "-m", "indexer", "--home", str(home), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=_ROOT)


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()


def leftovers(session: int, grace: float) -> list[int]:
    """Processes of a killed command's session still running after `grace` seconds; killed."""
    wait_for(lambda: not processes.session_members(session), grace, 0.2)
    left = processes.session_members(session)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def check_current(report: Report, section: str, snapshots: Path) -> None:
    try:
        loaded = load_current(snapshots)
        report.check(section, "current loads", True, f"{loaded.version}, "
                     f"{loaded.entry_count:,} entries")
    except SnapshotError as err:
        report.check(section, "current loads", False, err.message)


# ---- kills --------------------------------------------------------------------------------------


def kill_imports(report: Report, home: Path, args: argparse.Namespace, rng: random.Random) -> None:
    for round_ in range(args.import_kills):
        listing = home.parent / f"chaos-import-{round_}.txt"
        raw = rng.randbytes(32 * args.import_lines).hex()
        listing.write_text("".join(raw[i:i + 64] + "\n" for i in range(0, len(raw), 64)))
        before = entry_count(home)
        delay = rng.uniform(0.05, args.max_kill_delay)
        # Every other kill lands once the parser process has worked for half a CPU second:
        # it is then batches ahead of the inserter, blocked on its full queue.
        trigger = "delay" if round_ % 2 else "parser busy"
        process = indexer(home, "import", BANK, str(listing), "--algorithm", "pdq")
        finished = wait_for(lambda p=process, t=trigger: (  # type: ignore[misc]
            p.poll() is not None or (t != "delay" and _parser_busy(p.pid))),
            delay if trigger == "delay" else 120.0, 0.01)
        finished = finished and process.poll() is not None
        kill(process)
        section = f"import kill {round_ + 1} ({trigger}" + (
            f" {delay:.2f} s)" if trigger == "delay" else ")")
        listing.unlink()
        if trigger != "delay":  # a kill that waited for the parser must have found it at work
            report.check(section, "killed while the parser was busy", not finished,
                         "the import finished first: the trigger never fired" if finished else "")
        left = leftovers(process.pid, args.orphan_grace)
        report.check(section, "no process left running", not left,
                     f"{len(left)} left (pids {left}), killed now" if left else "")
        report.check(section, "integrity_check", (result := integrity(home)) == "ok", result)
        after = entry_count(home)
        report.check(section, "all or nothing", after in (before, before + args.import_lines),
                     f"{after - before:+,} entries ({'finished' if finished else 'killed'})")
        check_current(report, section, home / "snapshots")


def _parser_busy(pid: int) -> bool:
    return any(processes.cpu_seconds(child) >= 0.5 and "parser_process" in
               processes.command_line(child) for child in processes.descendants(pid))


def _add_entries(home: Path, count: int, rng: random.Random) -> None:
    with SqliteStore(home / "store.sqlite") as store:
        store.add_entries(BANK, (NewEntry("pdq", rng.randbytes(32), None) for _ in range(count)))


def _triggered(trigger: str, snapshots: Path, before: str | None) -> bool:
    if trigger == "temporary directory":
        return any(p.name.startswith(".tmp-") for p in snapshots.iterdir())
    if trigger == "current switched":
        return current_version(snapshots) != before
    return False  # "delay": only the time limit ends the wait


def kill_publishes(report: Report, home: Path, args: argparse.Namespace,
                   rng: random.Random) -> None:
    snapshots = home / "snapshots"
    triggers = ["delay", "temporary directory", "current switched"]
    rng.shuffle(triggers)  # each in turn, in a seeded order
    for round_ in range(args.publish_kills):
        _add_entries(home, 100, rng)
        before = current_version(snapshots)
        trigger = triggers[round_ % len(triggers)]
        delay = rng.uniform(0.05, args.max_kill_delay)
        process = indexer(home, "publish")
        limit = delay if trigger == "delay" else 120.0
        wait_for(lambda p=process, t=trigger, b=before: (  # type: ignore[misc]
            p.poll() is not None or _triggered(t, snapshots, b)), limit, 0.001)
        kill(process)
        section = f"publish kill {round_ + 1} ({trigger}" + (
            f" {delay:.2f} s)" if trigger == "delay" else ")")
        left = leftovers(process.pid, args.orphan_grace)
        report.check(section, "no process left running", not left, f"pids {left}" if left else "")
        check_current(report, section, snapshots)
    # A publish killed inside its clean-up leaves a version without manifest; plant one, then
    # the next publish must leave only complete versions and no temporaries.
    good = current_version(snapshots)
    assert good is not None
    planted = snapshots / "20000101T000000.000000Z-r0"
    shutil.copytree(snapshots / good, planted)
    (planted / "manifest.json").unlink()
    done = subprocess.run([sys.executable, "-m", "indexer", "--home", str(home), "publish",
                           "--force"], capture_output=True, text=True, cwd=_ROOT, check=False)
    report.check("publish after kills", "succeeds", done.returncode == 0,
                 done.stderr.strip()[-300:])
    stray = sorted(p.name for p in snapshots.iterdir()
                   if p.is_dir() and not (p / "manifest.json").exists())
    report.check("publish after kills", "only complete versions left", not stray,
                 f"left: {', '.join(stray)}" if stray else "")
    check_current(report, "publish after kills", snapshots)


# ---- publishes under load -----------------------------------------------------------------------


def _loader(server: ServerProcess, home: Path, calls: int, stop: threading.Event,
            totals: dict[str, Any]) -> None:
    """Rounds of bounded loadgen runs, alternating ScanHashes and ScanImage, until `stop`."""
    known = loadgen.read_known_hashes(home / KNOWN_FILE)
    image = loadgen.make_jpeg(loadgen.default_photo())
    modes = ("scan-hashes", "scan-image")
    while not stop.is_set():
        result = bounded_round(server, modes[totals["rounds"] % 2], calls, image, known)
        totals["rounds"] += 1
        totals["calls"] += result["issued_total"]
        for code, count in result["errors"].items():
            totals["errors"][code] = totals["errors"].get(code, 0) + count


def publishes_under_load(report: Report, home: Path, args: argparse.Namespace,
                         rng: random.Random) -> None:
    snapshots = home / "snapshots"
    totals: dict[str, Any] = {"rounds": 0, "calls": 0, "errors": {}}
    with serve(home, "--workers", "2") as server:
        stop = threading.Event()
        loader = threading.Thread(target=_loader, args=(server, home, args.load_calls, stop,
                                                        totals), daemon=True)
        loader.start()
        wait_for(lambda: totals["rounds"] > 0 or not loader.is_alive(), 120)
        published = 0
        for _ in range(args.publishes):
            _add_entries(home, 10, rng)
            done = subprocess.run([sys.executable, "-m", "indexer", "--home", str(home),
                                   "publish"], capture_output=True, cwd=_ROOT, check=False)
            published += done.returncode == 0
        stop.set()
        loader.join(timeout=600)
        last = current_version(snapshots)
        served = set()
        for _ in range(4):  # fresh connections reach either worker
            with Client(server.target, api_key=server.keys["admin"]) as admin:
                wait_for(lambda a=admin: a.index_status().version == last, 60, 0.2)  # type: ignore[misc]
                served.add(admin.index_status().version)
    report.check("publishes under load", "every publish succeeded", published == args.publishes,
                 f"{published}/{args.publishes}")
    errors = sum(totals["errors"].values())
    report.check("publishes under load", "0 failed calls", errors == 0 and totals["calls"] > 0,
                 f"{totals['calls']:,} calls in {totals['rounds']} rounds, errors "
                 f"{totals['errors'] or 0}")
    report.check("publishes under load", "workers serve the last version", served == {last},
                 f"served {sorted(served)}, current {last}")
    report.figures["publishes_under_load"] = {"publishes": published, "calls": totals["calls"],
                                              "failed_calls": errors}


# ---- the command --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=200_000,
                        help="PDQ entries in the store (default %(default)s; the issue: 1M)")
    parser.add_argument("--import-kills", type=int, default=5)
    parser.add_argument("--import-lines", type=int, default=600_000,
                        help="lines of each killed import (default %(default)s, ~39 MB: past "
                             "the 16 MB at which the importer starts a parser process)")
    parser.add_argument("--publish-kills", type=int, default=5)
    parser.add_argument("--max-kill-delay", type=float, default=3.0,
                        help="kills land after 0.05 s to this many seconds (default %(default)s)")
    parser.add_argument("--orphan-grace", type=float, default=10.0,
                        help="seconds a killed command's children get to exit on their own")
    parser.add_argument("--publishes", type=int, default=5, help="publishes under load")
    parser.add_argument("--load-calls", type=int, default=400,
                        help="calls per loadgen round during the publishes (default %(default)s)")
    parser.add_argument("--no-bad-snapshots", dest="bad_snapshots", action="store_false")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--home", type=Path, help="where to build the store (default: a "
                        "temporary directory, removed afterwards); must not exist")
    parser.add_argument("--json", type=Path, help="also write the report object here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="hashsvc-chaos-") as scratch:
        home = args.home or Path(scratch) / "home"
        started = time.perf_counter()
        built = build_home(home, args.entries, known_sample=100, seed=args.seed)
        print(f"chaos: {built['added']:,} entries in {home}", flush=True)
        kill_imports(report, home, args, rng)
        kill_publishes(report, home, args, rng)
        if args.publishes:
            publishes_under_load(report, home, args, rng)
        if args.bad_snapshots:
            bad_snapshots(report, home, args)
        seconds = time.perf_counter() - started
    kills = args.import_kills + args.publish_kills
    result = {"tool": "chaos", "seed": args.seed, "entries": args.entries, "kills": kills,
              "checks": report.checks, "failed": len(report.failed),
              "seconds": round(seconds, 1), **report.figures}
    lost = [c for c in report.checks if c["check"] in ("all or nothing", "integrity_check",
                                                       "current loads") and not c["ok"]]
    load = report.figures.get("publishes_under_load", {})
    result["figures"] = [
        f"chaos: {kills} SIGKILLs ({args.import_kills} imports, {args.publish_kills} "
        f"publishes) on {args.entries:,} entries: {len(lost)} checks of lost or partial data "
        "failed",
        f"chaos: {load.get('publishes', 0)} publishes under load, {load.get('calls', 0):,} "
        f"calls, {load.get('failed_calls', 0)} failed",
        f"chaos: {report.figures.get('bad_snapshots', {}).get('refused', 0)} of "
        f"{len(BAD_SNAPSHOTS) - 1} bad snapshots refused and counted",
        f"chaos: {len(report.failed)} of {len(report.checks)} checks failed",
    ]
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n".join(result["figures"]))
    print(f"chaos: {'GUARANTEE BROKEN' if report.failed else 'guarantees kept'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
