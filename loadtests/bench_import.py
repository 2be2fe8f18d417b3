"""Hash-list import speed: a CSV of N PDQ hashes into a fresh store, hashsvc against baselines.

    python loadtests/bench_import.py --lines 1000000 --rounds 3
    python loadtests/bench_import.py --smoke                       # CI: seconds
    python loadtests/bench_import.py --lines 1000000 --postgres    # + the PostgreSQL store

Each round runs, one after the other in child processes and on the same file:

- `indexer import` (the real CLI: parse, validate, one transaction);
- the naive baseline (`loadtests/naive_import.py`: csv + sqlite3 executemany, no tuning);
- with `--also-source DIR`, `indexer import` from another checkout (e.g. the main branch), to
  measure a change before and after in the same run;
- with `--postgres` (a throwaway server from Debian's binaries, as the tests start one) or
  `--store postgresql://...` (a server where the benchmark may create and drop databases),
  `indexer --store URL import` into a fresh database each round: COPY into PostgreSQL, side by
  side with the SQLite path on the same file.

Rounds interleave the contenders so that a shared, noisy machine slows them alike. Prints a table
and, last, one JSON object: median wall seconds, hashes/s, child CPU seconds (steadier than wall
time under load) and the ratios, with the load averages. HMA's ~150 adds/s is the issue's
reference figure, printed as such: HMA is not installable here, so it is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HMA_ADDS_PER_SECOND = 150  # the reference for HMA on this machine (not measured here)
NAIVE = Path(__file__).resolve().with_name("naive_import.py")


def write_csv(path: Path, lines: int) -> None:
    raw = os.urandom(32 * lines).hex()
    with path.open("w") as handle:
        handle.write("hash,algorithm,external_id\n")
        for i in range(lines):
            handle.write(f"{raw[i * 64:(i + 1) * 64]},pdq,case-{i}\n")


@dataclass
class Contender:
    name: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def run(self, command: list[str], env: dict[str, str] | None = None) -> str:
        """Run one import; records its wall and CPU seconds, returns its output."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        self.walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return done.stdout + done.stderr

    def summary(self, lines: int) -> dict[str, float]:
        wall, cpu = statistics.median(self.walls), statistics.median(self.cpus)
        return {"median_seconds": round(wall, 2), "hashes_per_second": round(lines / wall),
                "median_cpu_seconds": round(cpu, 2)}


def indexer_round(contender: Contender, csv: Path, lines: int, source: Path | None) -> None:
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    with tempfile.TemporaryDirectory() as home:
        indexer = [sys.executable, "-m", "indexer", "--home", home]
        subprocess.run([*indexer, "bank", "create", "bench"], check=True, capture_output=True,
                       env=env)
        output = contender.run([*indexer, "import", "bench", str(csv)], env)
        assert f"added {lines:,}" in output, output


def postgres_round(contender: Contender, csv: Path, lines: int, server_url: str) -> None:
    import psycopg  # only when PostgreSQL is measured

    base, _, _ = server_url.rpartition("/")
    name = f"hashsvc_bench_{os.getpid()}_{len(contender.walls)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        with tempfile.TemporaryDirectory() as home:
            indexer = [sys.executable, "-m", "indexer", "--home", home, "--store", f"{base}/{name}"]
            subprocess.run([*indexer, "bank", "create", "bench"], check=True,
                           capture_output=True)
            output = contender.run([*indexer, "import", "bench", str(csv)])
            assert f"added {lines:,}" in output, output
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())


@contextlib.contextmanager
def postgres_server(args: argparse.Namespace) -> Iterator[str | None]:
    """The URL of the server to measure PostgreSQL on, if any (`--store`, or `--postgres`)."""
    if args.store:
        yield args.store
    elif args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.postgres_server import find_binaries, running_postgres

        bin_dir = find_binaries()
        if bin_dir is None:
            raise SystemExit("--postgres: no /usr/lib/postgresql/*/bin "
                             "(apt-get install postgresql)")
        with running_postgres(bin_dir) as server:
            yield server.url()
    else:
        yield None


def naive_round(contender: Contender, csv: Path, lines: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        output = contender.run([sys.executable, str(NAIVE), str(csv), f"{tmp}/naive.sqlite"])
        assert output.strip() == str(lines), output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also-source", type=Path, metavar="DIR",
                        help="also run `indexer import` from this checkout (e.g. main)")
    parser.add_argument("--postgres", action="store_true",
                        help="also import into PostgreSQL, on a throwaway server started here")
    parser.add_argument("--store", metavar="URL",
                        help="also import into PostgreSQL on this server (databases are created "
                        "and dropped on it)")
    parser.add_argument("--smoke", action="store_true", help="20,000 lines, one round")
    args = parser.parse_args(argv)
    lines, rounds = (20_000, 1) if args.smoke else (args.lines, args.rounds)
    hashsvc, naive, other = Contender("hashsvc"), Contender("naive"), Contender("also")
    postgres = Contender("postgres")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, postgres_server(args) as server_url:
        csv = Path(tmp) / "list.csv"
        write_csv(csv, lines)
        for _ in range(rounds):
            indexer_round(hashsvc, csv, lines, None)
            if server_url is not None:
                postgres_round(postgres, csv, lines, server_url)
            naive_round(naive, csv, lines)
            if args.also_source is not None:
                indexer_round(other, csv, lines, args.also_source.resolve())
    ours, theirs = hashsvc.summary(lines), naive.summary(lines)
    report: dict[str, object] = {
        "benchmark": "import", "lines": lines, "rounds": rounds,
        **ours,
        "naive": theirs,
        "ratio_vs_naive": round(theirs["median_seconds"] / ours["median_seconds"], 2),
        "cpu_ratio_vs_naive": round(theirs["median_cpu_seconds"] / ours["median_cpu_seconds"],
                                    2),
        "hma_reference_adds_per_second": HMA_ADDS_PER_SECOND,
        "ratio_vs_hma_reference": round(ours["hashes_per_second"] / HMA_ADDS_PER_SECOND),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    rows = [("hashsvc `indexer import`", ours), ("naive csv + sqlite3 executemany", theirs)]
    if postgres.walls:
        into_postgres = postgres.summary(lines)
        report["postgres"] = into_postgres
        report["postgres_ratio_vs_sqlite"] = round(
            ours["median_seconds"] / into_postgres["median_seconds"], 2)
        rows.insert(1, ("hashsvc `indexer --store postgresql:// import`", into_postgres))
    if args.also_source is not None:
        also = other.summary(lines)
        report["also"] = {"source": str(args.also_source), **also}
        report["ratio_vs_also"] = round(also["median_seconds"] / ours["median_seconds"], 2)
        report["cpu_ratio_vs_also"] = round(
            also["median_cpu_seconds"] / ours["median_cpu_seconds"], 2)
        rows.append((f"indexer import from {args.also_source}", also))
    print(f"{lines:,} PDQ lines, median of {rounds} round(s), load {load_before[0]:.1f}")
    print(f"{'contender':42} {'hashes/s':>10} {'wall s':>8} {'CPU s':>7}")
    for name, figures in rows:
        print(f"{name:42} {figures['hashes_per_second']:>10,} "
              f"{figures['median_seconds']:>8.2f} {figures['median_cpu_seconds']:>7.2f}")
    print(f"{'HMA (the issue’s reference, not measured)':42} {HMA_ADDS_PER_SECOND:>10,}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
