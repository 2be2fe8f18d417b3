"""Fuzz hashsvc with hostile images and hash lists; exit 1 if any input broke a guarantee.

    python -m loadtests.fuzz --inputs 300 --seed 1                      # every mode, CI-sized
    python -m loadtests.fuzz --modes decoders --inputs 10000 --seed 1 --json fuzz.json
    python -m loadtests.fuzz --only 'img-1-42:mutate:png:flip' --save-failures /tmp/found

Modes (default: all three):
  decoders  each image through the scan path (fast PDQ) and the hash path (full decode), each
            in a forked child with a hang guard and a memory budget;
  importer  each hash list through `indexer import` into a scratch home: all or nothing,
            and the store passes `PRAGMA integrity_check`;
  server    a real `hashsvc serve` on loopback: ScanImage and HashImage for every image,
            ScanHashes for every stored list and every hostile hash string.
The issue's recipes (issue 12: defects 3-6 as images, 1 and 7 as hash lists) run first
(--no-recipes: not).

The guarantee: every input is answered (ok), or refused with a message (invalid_argument,
resource_exhausted), within the hang guard and the memory budget, and an import stores all of
a file or nothing and names the file and line of what it refused. Any other outcome (unknown,
traceback, hang, crash, memory, partial, unlocated, not_refused) is a failure: it is listed
with its input's name, and the exit code is 1. Re-run one input with `--only NAME` (names are
reproducible from the seed); `--save-failures DIR` writes the failing inputs' bytes.

The optional mode `atheris` runs atheris (libFuzzer) over the decoders for `--atheris-runs`
inputs; where atheris is not installed (`pip install atheris`) it is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # run as `python loadtests/fuzz`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from loadtests.fuzz import hashlines, images  # noqa: E402
from loadtests.fuzz.hashlines import HashList  # noqa: E402
from loadtests.fuzz.images import FuzzImage  # noqa: E402
from loadtests.fuzz.inprocess import Guard, run_decoders, run_importer  # noqa: E402
from loadtests.fuzz.outcomes import Tally  # noqa: E402

MODES = ("decoders", "importer", "server")  # the default
OPTIONAL_MODES = ("atheris",)
_NAME = re.compile(r"^(img|list)-(-?\d+)-(\d+):")


def _images(args: argparse.Namespace, job: int = 0, jobs: int = 1) -> Iterator[FuzzImage]:
    """This job's share of the images: the recipes go to job 0, input i to job i % jobs."""
    if args.only:
        recipes = {r.name: r for r in images.recipes()}
        for name in args.only:
            if name in recipes:
                yield recipes[name]
            elif (match := _NAME.match(name)) and match[1] == "img":
                yield images.generate_one(int(match[2]), int(match[3]))
        return
    if args.recipes and job == 0:
        yield from images.recipes()
    for index in range(job, args.inputs, jobs):
        yield images.generate_one(args.seed, index)


def _decoder_job(args: argparse.Namespace, guard: Guard, job: int) -> Tally:
    tally = Tally("decoders")
    share = len(range(job, args.inputs, args.jobs))
    run_decoders(_images(args, job, args.jobs), tally, guard,
                 _progress(f"decoders job {job + 1}/{args.jobs}", share))
    return tally


def _decoders(args: argparse.Namespace, guard: Guard, tally: Tally, total: int) -> None:
    """The decoders mode, over `--jobs` processes (each forks its own children)."""
    if args.jobs == 1 or args.only:
        run_decoders(_images(args), tally, guard, _progress("decoders", total))
        return
    context = multiprocessing.get_context("fork")  # the inputs are generated in each job
    with context.Pool(args.jobs) as pool:
        for part in pool.imap_unordered(partial(_decoder_job, args, guard), range(args.jobs)):
            tally.merge(part)


def _lists(args: argparse.Namespace) -> Iterator[HashList]:
    if args.only:
        recipes = {r.name: r for r in hashlines.recipes()}
        for name in args.only:
            if name in recipes:
                yield recipes[name]
            elif (match := _NAME.match(name)) and match[1] == "list":
                yield hashlines.generate_one(int(match[2]), int(match[3]))
        return
    yield from hashlines.generate(args.seed, args.lists, with_recipes=args.recipes)


def _progress(mode: str, total: int) -> Any:
    started = time.perf_counter()

    def report(done: int) -> None:
        if done % 100 == 0 or done == total:
            print(f"  {mode}: {done}/{total} in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    return report


def _atheris(args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "loadtests.fuzz.atheris_run", "--runs",
               str(args.atheris_runs), "--seed", str(args.seed), "--hang-seconds",
               str(int(args.hang_seconds))]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=_ROOT, check=False)  # one stream: libFuzzer's order kept
    output = done.stdout
    skipped = "atheris is not installed" in output
    finding = re.search(r"=== Uncaught Python exception: ===\n(.*?)\n==\d+==", output, re.S)
    return {"runs": args.atheris_runs, "exit": done.returncode, "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 1), "failed": done.returncode != 0,
            "finding": (finding.group(1) if finding else output[-3000:]) if done.returncode
            else "", "stats": re.findall(r"stat::\w+:\s*\d+", output)}


def _save(tallies: list[Tally], directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = {f.input for tally in tallies for f in tally.failures}
    recipes = {r.name: r.data for r in images.recipes()}
    recipes.update({r.name: r.content for r in hashlines.recipes()})
    saved = []
    for name in sorted(names):
        match = _NAME.match(name)
        if name in recipes:
            data = recipes[name]
        elif match and match[1] == "img":
            data = images.generate_one(int(match[2]), int(match[3])).data
        elif match:
            data = hashlines.generate_one(int(match[2]), int(match[3])).content
        else:
            continue
        path = directory / re.sub(r"[^\w.@-]+", "_", name)
        path.write_bytes(data)
        saved.append(str(path))
    return saved


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated, of: " + ", ".join(MODES + OPTIONAL_MODES)
                        + " (default: " + ",".join(MODES) + ")")
    parser.add_argument("--inputs", type=int, default=300, help="generated images, besides "
                        "the recipes (default %(default)s)")
    parser.add_argument("--lists", type=int, help="generated hash lists (default: inputs / 3)")
    parser.add_argument("--hashes", type=int, default=100,
                        help="server mode: hostile hash strings sent to ScanHashes "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-recipes", dest="recipes", action="store_false",
                        help="leave out the issue's recipe inputs")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this input (repeatable), by the name a report gave")
    parser.add_argument("--hang-seconds", type=float, default=60.0,
                        help="per-input hang guard (default %(default)s: the slowest admitted "
                             "inputs, 24 MP decoded in full, take 3-13 s on a busy 2-core "
                             "machine; the issue's slow JPEG is caught by its recipe instead)")
    parser.add_argument("--memory-budget-mb", type=float, default=1024.0,
                        help="peak memory one input may take (default %(default)s; the "
                             "largest image the limits admit, 24 MP in full, takes ~850 MB)")
    parser.add_argument("--memory-cap-mb", type=float, default=3072.0,
                        help="decoders/importer: hard address-space cap per input, so that a "
                             "bomb fails in its child instead of exhausting the machine")
    parser.add_argument("--jobs", type=int, default=1,
                        help="decoders: inputs run in this many processes at once (default "
                             "%(default)s; times then include their contention)")
    parser.add_argument("--atheris-runs", type=int, default=100_000,
                        help="mode atheris: inputs of the coverage-guided run (default "
                             "%(default)s)")
    parser.add_argument("--save-failures", type=Path, metavar="DIR",
                        help="write every failing input's bytes here")
    parser.add_argument("--json", type=Path, help="also write the report object to this file")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(args.modes) - set(MODES + OPTIONAL_MODES):
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; known: "
                     f"{', '.join(MODES + OPTIONAL_MODES)}")
    if args.lists is None:
        args.lists = max(1, args.inputs // 3)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    guard = Guard(args.hang_seconds, args.memory_budget_mb, args.memory_cap_mb)
    tallies: list[Tally] = []
    seconds: dict[str, float] = {}
    image_count = len(list(_images(args))) if args.only else args.inputs + (
        len(images.recipes()) if args.recipes else 0)
    with tempfile.TemporaryDirectory(prefix="hashsvc-fuzz-") as scratch:
        for mode in (m for m in args.modes if m in MODES):
            tally = Tally(mode)
            started = time.perf_counter()
            if mode == "decoders":
                _decoders(args, guard, tally, image_count)
            elif mode == "importer":
                root = Path(scratch) / "importer"
                root.mkdir()
                run_importer(_lists(args), tally, guard, root, _progress(mode, args.lists))
            else:
                from loadtests.fuzz.server import run_server  # imports grpc: only when needed

                root = Path(scratch) / "server"
                root.mkdir()
                hostile = [] if args.only else list(hashlines.hostile_hashes(args.seed,
                                                                            args.hashes))
                run_server(_images(args), _lists(args), hostile, tally, guard, root,
                           _progress(mode, image_count))
            seconds[mode] = round(time.perf_counter() - started, 1)
            tallies.append(tally)
            print(tally.table(), flush=True)
    report: dict[str, Any] = {
        "tool": "fuzz", "seed": args.seed, "inputs": args.inputs, "lists": args.lists,
        "recipes": args.recipes, "hang_seconds": args.hang_seconds, "jobs": args.jobs,
        "memory_budget_mb": args.memory_budget_mb,
        "modes": {t.mode: {**t.as_dict(), "seconds": seconds[t.mode]} for t in tallies},
        "failed": sum(t.failed for t in tallies),
    }
    if "atheris" in args.modes:
        report["atheris"] = _atheris(args)
        found = report["atheris"]
        print("atheris: " + ("skipped: atheris is not installed (pip install atheris)"
                             if found["skipped"] else f"{args.atheris_runs} runs, exit "
                             f"{found['exit']}" + (f"; found:\n{found['finding']}"
                                                   if found["failed"] else "")))
    if args.save_failures:
        report["saved"] = _save(tallies, args.save_failures)
    report["figures"] = [
        f"fuzz {t.mode}: {t.runs:,} runs, " + ", ".join(
            f"{o} {n:,}" for o, n in sorted(t.counts.items())) +
        (f"; worst {t.slowest.seconds:.2f} s" if t.slowest else "") +
        (f", worst peak {t.largest.peak_mb:.0f} MB" if t.largest else "")
        for t in tallies]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = json.dumps(report)
    if args.json:
        args.json.write_text(text + "\n")
    print("\n".join(report["figures"]))
    broken = report["failed"] or report.get("atheris", {}).get("failed")
    print(f"fuzz: {'GUARANTEE BROKEN' if broken else 'guarantee kept'}: "
          f"{report['failed']} failing run(s)" + (" and an atheris finding"
                                                   if report.get("atheris", {}).get("failed")
                                                   else ""))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
