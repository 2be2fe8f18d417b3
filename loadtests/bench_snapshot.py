"""Snapshot build and load at scale: `indexer publish` and a server start, against FAISS.

    python loadtests/bench_snapshot.py --entries 10000000 --home /tmp/hashsvc-10m --rounds 3
    python loadtests/bench_snapshot.py --smoke                    # CI: 20,000 entries, seconds

The home (a PDQ bank shaped like a real list: make_snapshot.py) is built once and kept when
`--home` is given, since filling a 10M store takes minutes. Then each round, in child processes:

- build: `indexer publish --force` (store -> snapshot, end to end), wall seconds and peak RSS;
  baseline: FAISS `IndexBinaryFlat` of the same hashes, read from the same store and written
  to a file (loadtests/faiss_baseline.py; what HMA builds, less its metadata);
- load: `hashsvc serve` from process start until gRPC health says SERVING, and the snapshot
  load itself (the server's "serving snapshot" log line: checksums verified, files mapped);
  baseline: `faiss.read_index_binary` of that flat index. HMA's 38 s to load 10M hashes
  (ThreadExchange PR #1497) is printed as the issue's reference, not measured.

Prints a table and, last, one JSON object with medians, ratios and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_snapshot.py`
    sys.path.insert(0, str(_ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from hashsvc.home import DataHome  # noqa: E402
from loadtests.make_snapshot import build_home  # noqa: E402

HMA_LOAD_SECONDS_10M = 38  # ThreadExchange PR #1497: HMA's pickled index, 10M hashes
FAISS_BASELINE = Path(__file__).resolve().with_name("faiss_baseline.py")


def run_child(command: list[str]) -> tuple[float, float, float, str]:
    """Run to completion: (wall seconds, CPU seconds, peak RSS MiB, stdout + stderr).

    CPU seconds are steadier than wall time on a shared machine. Linux counts the forked
    parent's pages before exec in the peak RSS: this process's ~85 MiB is a floor."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited {process.returncode}:\n{output}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_until_healthy(home: Path, timeout: float = 120) -> tuple[float, float]:
    """(seconds from process start to health SERVING, the server's own snapshot load time)."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "hashsvc", "serve", "--home", str(home),
         "--http-listen", "off", "--listen",
         f"127.0.0.1:{port}", "--workers", "1", "--metrics-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if time.perf_counter() - started > timeout or server.poll() is not None:
                    raise RuntimeError(f"server not serving (exit {server.poll()})")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    ready = time.perf_counter() - started
                    break
                time.sleep(0.01)
    finally:
        server.terminate()
        _, log = server.communicate(timeout=60)
    loads = [json.loads(line)["load_seconds"] for line in log.splitlines()
             if '"serving snapshot"' in line]
    return ready, loads[0]


def prepare_home(home: Path, entries: int) -> None:
    if not DataHome(home).store_path.exists():
        summary = build_home(home, entries, publish_snapshot=False)
        print(f"built {home}: {summary['added']:,} entries in "
              f"{summary['store_import_seconds']} s", file=sys.stderr)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--home", type=Path, help="build the store here once and keep it")
    parser.add_argument("--smoke", action="store_true", help="20,000 entries, one round")
    args = parser.parse_args(argv)
    entries, rounds = (20_000, 1) if args.smoke else (args.entries, args.rounds)
    figures: dict[str, list[float]] = {name: [] for name in (
        "publish_seconds", "publish_cpu_seconds", "publish_max_rss_mib", "faiss_build_seconds",
        "faiss_build_max_rss_mib", "serving_seconds", "snapshot_load_seconds",
        "faiss_load_seconds")}
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        prepare_home(home, entries)
        store = str(DataHome(home).store_path)
        index = str(Path(tmp) / "flat.faiss")
        load_before = os.getloadavg()
        for _ in range(rounds):
            seconds, cpu, rss, _ = run_child([sys.executable, "-m", "indexer", "--home",
                                              str(home), "publish", "--force"])
            figures["publish_seconds"].append(seconds)
            figures["publish_cpu_seconds"].append(cpu)
            figures["publish_max_rss_mib"].append(rss)
            seconds, _, rss, built = run_child([sys.executable, str(FAISS_BASELINE), "build",
                                                store, index])
            figures["faiss_build_seconds"].append(seconds)
            figures["faiss_build_max_rss_mib"].append(rss)
            serving, loading = serve_until_healthy(home)
            figures["serving_seconds"].append(serving)
            figures["snapshot_load_seconds"].append(loading)
            _, _, _, output = run_child([sys.executable, str(FAISS_BASELINE), "load", index])
            loaded = json.loads(output.splitlines()[-1])
            if loaded["codes"] != json.loads(built.splitlines()[-1])["codes"]:
                raise RuntimeError(f"FAISS read back a different index: {output}")
            figures["faiss_load_seconds"].append(loaded["seconds"])
    report: dict[str, Any] = {"benchmark": "snapshot", "entries": entries, "rounds": rounds,
                              **{name: median(values) for name, values in figures.items()}}
    report["build_ratio_vs_faiss_flat"] = round(
        report["faiss_build_seconds"] / report["publish_seconds"], 2)
    report["hma_reference_load_seconds_10m"] = HMA_LOAD_SECONDS_10M
    report["load_average_before"] = [round(x, 2) for x in load_before]
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"{entries:,} PDQ entries, median of {rounds} round(s), load {load_before[0]:.1f}")
    for label, ours, theirs in (
        ("build: indexer publish (s) | FAISS flat build (s)", "publish_seconds",
         "faiss_build_seconds"),
        ("build peak RSS (MiB) | FAISS flat build", "publish_max_rss_mib",
         "faiss_build_max_rss_mib"),
        ("load: snapshot load in server (s) | FAISS read (s)", "snapshot_load_seconds",
         "faiss_load_seconds"),
    ):
        print(f"{label:55} {report[ours]:>9} | {report[theirs]}")
    print(f"{'build: indexer publish CPU, all threads (s)':55} {report['publish_cpu_seconds']:>9}")
    print(f"{'process start -> health SERVING (s)':55} {report['serving_seconds']:>9} | "
          f"HMA {HMA_LOAD_SECONDS_10M} s to load 10M (the issue's reference, not measured)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
