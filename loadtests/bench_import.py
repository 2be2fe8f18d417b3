"""Hash-list import speed: a CSV of N PDQ hashes into a fresh store, through `indexer import`.

    python loadtests/bench_import.py --lines 1000000 --rounds 3

Runs the real CLI in a child process (parse, validate, one transaction) and reports the median
hashes/s over the rounds. The issue's reference figure for HMA on this machine is ~150 adds/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def write_csv(path: Path, lines: int) -> None:
    raw = os.urandom(32 * lines).hex()
    with path.open("w") as handle:
        handle.write("hash,algorithm,external_id\n")
        for i in range(lines):
            handle.write(f"{raw[i * 64:(i + 1) * 64]},pdq,case-{i}\n")


def one_round(csv: Path, lines: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        indexer = [sys.executable, "-m", "indexer", "--home", home]
        subprocess.run([*indexer, "bank", "create", "bench"], check=True, capture_output=True)
        started = time.perf_counter()
        done = subprocess.run([*indexer, "import", "bench", str(csv)], check=True,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        assert f"added {lines:,}" in done.stderr, done.stderr
        return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="20,000 lines, one round")
    args = parser.parse_args(argv)
    lines, rounds = (20_000, 1) if args.smoke else (args.lines, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "list.csv"
        write_csv(csv, lines)
        seconds = statistics.median(one_round(csv, lines) for _ in range(rounds))
    print(json.dumps({"benchmark": "import", "lines": lines, "rounds": rounds,
                      "median_seconds": round(seconds, 2),
                      "hashes_per_second": round(lines / seconds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
