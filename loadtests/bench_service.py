"""Service throughput, one command per figure, baseline and hashsvc side by side with the ratio.

    python loadtests/bench_service.py scan-hashes          1 hash per call, concurrency 32
    python loadtests/bench_service.py scan-hashes-batch    --batches 100 1000 10000
    python loadtests/bench_service.py scan-image           ~1.6 MP, ~360 KB JPEG, concurrency 8
    python loadtests/bench_service.py stream               ScanImages, 2 streams of that JPEG
    python loadtests/bench_service.py scan-image --corpus DIR --calls 200
                                                           the upload corpus's first 200 files

Each command starts the servers it compares (2 workers each, on free loopback ports, over the
1M-entry PDQ home that `make_snapshot.py` builds: `--home`), then drives them with `loadgen.py`
in interleaved rounds (A, B, A, B, ...) so that both see the same machine, and prints per
target the median of the rounds' throughput and p99, the 1-minute load average at each round's
start, and the ratio of the medians. The machine is shared; read figures with their load.

Baselines:
- measured here: for ScanHashes, `echo_server.py` (a bare gRPC Python ScanService answering a
  constant: the ceiling of any Python gRPC server on this machine); for ScanImage and the stream,
  hashsvc on the reference PDQ path (HMA's: full decode, `convert("RGB")`, pdqhash) against
  hashsvc with `--scan-fast-pdq`;
- quoted, not measured: HMA's figures from the performance issue (HMA cannot be installed
  here), printed as "HMA (issue)" and used for a second ratio;
- `--before DIR`: also serve a source tree of hashsvc (e.g. `git archive` of an older commit)
  as "hashsvc (before)", to measure a change.

`--calls N` bounds each round by work instead of time (N calls per loadgen process, no warm-up):
the smoke test uses it, so that a busy machine makes the figures small, never empty.

`--clients N` splits the load over N loadgen processes (one Python client tops out below what
two server processes can answer); throughputs add up and the reported p99 is the worst client's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
ECHO = HERE / "echo_server.py"
DEFAULT_HOME = Path("/tmp/hashsvc-load-1m")
# The performance issue's measurements of HMA (hasher-matcher-actioner), quoted, not re-run.
HMA = {"scan-hashes": 150.0, "scan-hashes-batch": 150.0, "scan-image": 16.0, "stream": 16.0}
UNITS = {"scan-hashes": "lookups/s", "scan-hashes-batch": "hashes/s",
         "scan-image": "images/s", "stream": "images/s"}
IMAGE = ["--megapixels", "1.6", "--quality", "98"]  # ~1.1k x 1.5k, ~360 KB: the upload


@dataclass
class Target:
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hashsvc_target(label: str, home: Path, extra: Sequence[str] = (),
                   source: Path | None = None) -> Target:
    env = {}
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{source / 'clients' / 'python'}"
    return Target(label, [sys.executable, "-m", "hashsvc", "serve", "--home", str(home),
                          "--http-listen", "off",
                          "--workers", "2", "--metrics-listen", "", *extra], env)


@contextlib.contextmanager
def serving(targets: list[Target], workdir: Path) -> Iterator[None]:
    try:
        for target in targets:
            target.port = free_port()
            target.log = workdir / f"server-{target.port}.log"
            with target.log.open("wb") as log:
                target.process = subprocess.Popen(
                    [*target.command, "--listen", f"127.0.0.1:{target.port}"],
                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **target.env})
        for target in targets:
            wait_until_listening(target)
        yield
    finally:
        for target in targets:
            if target.process is not None and target.process.poll() is None:
                target.process.terminate()
        for target in targets:
            if target.process is not None:
                try:
                    target.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    target.process.kill()


def wait_until_listening(target: Target, timeout: float = 120.0) -> None:
    """hashsvc logs "serving" once every worker is ready; the echo server just listens."""
    assert target.process is not None and target.log is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise SystemExit(f"{target.label} exited: see {target.log}")
        text = target.log.read_text(errors="replace")
        if '"message": "serving"' in text or (target.command[1] == str(ECHO) and _accepts(target)):
            time.sleep(0.5)
            return
        time.sleep(0.2)
    raise SystemExit(f"{target.label} did not start in {timeout:.0f} s: see {target.log}")


def _accepts(target: Target) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", target.port), 1):
        return True
    return False


def server_cpu_seconds(target: Target) -> float:
    """CPU time used so far by the target's processes (the supervisor and its workers), read
    from /proc: CPU per call is steadier than calls per second on a shared machine."""
    assert target.process is not None
    pids, total = [target.process.pid], 0.0
    tick = os.sysconf("SC_CLK_TCK")
    while pids:
        pid = pids.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            pids.extend(int(child) for child in children)
    return total


def drive(target: Target, loadgen_args: list[str], clients: int, workdir: Path,
          concurrency: int) -> dict[str, Any]:
    """One round against one target: `clients` loadgen processes at once, summed."""
    per_client = max(1, concurrency // clients)
    cpu_before = server_cpu_seconds(target)
    runs = []
    for index in range(clients):
        out = workdir / f"round-{target.port}-{index}.json"
        out.unlink(missing_ok=True)
        runs.append((out, subprocess.Popen(
            [sys.executable, str(LOADGEN), *loadgen_args, "--target", f"127.0.0.1:{target.port}",
             "--concurrency", str(per_client), "--json", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    results = []
    for out, process in runs:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"loadgen failed against {target.label}: {err.decode()[-2000:]}")
        results.append(json.loads(out.read_text()))
    cpu = server_cpu_seconds(target) - cpu_before
    calls = sum(r["issued_total"] for r in results)
    codes: dict[str, int] = {}
    for r in results:
        for code, count in r["errors"].items():
            codes[code] = codes.get(code, 0) + count
    return {
        "server_cpu_ms_per_call": 1000 * cpu / calls if calls else 0.0,
        "throughput": sum(r["throughput_per_second"] for r in results),
        "hashes_per_second": sum(r.get("hashes_per_second", 0.0) for r in results),
        "p99_ms": max(r["latency_ms"]["p99"] for r in results),
        "p50_ms": max(r["latency_ms"]["p50"] for r in results),
        "errors": sum(r["error_count"] for r in results),
        "error_codes": codes,
        "client_cpu_percent": sum(r["client_cpu_percent_of_one_core"] for r in results),
    }


def measure(targets: list[Target], loadgen_args: list[str], rounds: int, clients: int,
            concurrency: int, workdir: Path, key: str) -> dict[str, list[dict[str, Any]]]:
    samples: dict[str, list[dict[str, Any]]] = {t.label: [] for t in targets}
    for number in range(rounds):
        order = targets if number % 2 == 0 else targets[::-1]  # neither always goes first
        for target in order:
            load = os.getloadavg()[0]
            result = drive(target, loadgen_args, clients, workdir, concurrency)
            result["load"] = load
            result["value"] = result[key]
            samples[target.label].append(result)
            print(f"  round {number + 1}: {target.label:<26} {result['value']:>10.1f} "
                  f"p99 {result['p99_ms']:>7.1f} ms  server CPU "
                  f"{result['server_cpu_ms_per_call']:.3f} ms/call  errors {result['errors']}"
                  f"{' ' + str(result['error_codes']) if result['errors'] else ''}"
                  f"  client CPU "
                  f"{result['client_cpu_percent']:.0f}%  load {load:.2f}", flush=True)
    return samples


def report(title: str, unit: str, hma: float, samples: dict[str, list[dict[str, Any]]],
           baseline: str, subject: str) -> dict[str, Any]:
    rows = {label: {"median": statistics.median(s["value"] for s in runs),
                    "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                    "errors": sum(s["errors"] for s in runs),
                    "server_cpu_ms_per_call": statistics.median(s["server_cpu_ms_per_call"]
                                                                for s in runs),
                    "client_cpu_percent": statistics.median(s["client_cpu_percent"]
                                                            for s in runs),
                    "loads": [round(s["load"], 2) for s in runs]}
            for label, runs in samples.items()}
    print(f"\n{title} ({time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores)")
    print(f"{'':<28} {unit:>12} {'p99 ms':>8} {'CPU ms/call':>11} {'errors':>6} "
          f"{'client CPU':>10}  load averages")
    print(f"{'HMA (issue, quoted)':<28} {hma:>12.1f}")
    for label, row in rows.items():
        print(f"{label:<28} {row['median']:>12.1f} {row['p99_ms']:>8.1f} "
              f"{row['server_cpu_ms_per_call']:>11.3f} {row['errors']:>6} "
              f"{row['client_cpu_percent']:>9.0f}%  {row['loads']}")
    ratio = rows[subject]["median"] / rows[baseline]["median"] if rows[baseline]["median"] else 0
    print(f"ratio {subject} / {baseline}: {ratio:.2f}x;  {subject} / HMA (issue): "
          f"{rows[subject]['median'] / hma:.1f}x", flush=True)
    return {"title": title, "unit": unit, "hma_issue": hma, "rows": rows,
            "ratio": round(ratio, 3), "baseline": baseline, "subject": subject}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=sorted(UNITS))
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="data home made by make_snapshot.py (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--calls", type=int,
                        help="bound each round by calls (per loadgen process), not by time: "
                             "--duration and --warmup are then ignored")
    parser.add_argument("--concurrency", type=int,
                        help="calls (streams) in flight: default 32 (hashes), 8 (image), 2 "
                             "(stream)")
    parser.add_argument("--clients", type=int, default=1, help="loadgen processes")
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 1000, 10000],
                        help="scan-hashes-batch: hashes per call")
    parser.add_argument("--before", type=Path,
                        help="a hashsvc source tree to serve as well, as 'hashsvc (before)'")
    parser.add_argument("--corpus", type=Path,
                        help="scan-image: send this upload corpus (loadtests/upload_corpus.py) "
                             "instead of the one JPEG; with --calls N each round sends its "
                             "first N files once each, so both servers hash the same files")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.corpus and args.figure != "scan-image":
        parser.error("--corpus is for scan-image")
    key_file = args.home / "bootstrap-admin.key"
    known = args.home / "loadtest-known-pdq.txt"
    if not known.exists() or not (key_file.exists() or os.environ.get("HASHSVC_API_KEY")):
        raise SystemExit(f"{args.home} is not a make_snapshot.py home: run\n  python "
                         f"loadtests/make_snapshot.py --home {args.home} --entries 1000000")
    if not os.environ.get("HASHSVC_API_KEY"):  # a key of the home's own, else the first start's
        os.environ["HASHSVC_API_KEY"] = key_file.read_text().strip()
    common = (["--calls", str(args.calls)] if args.calls
              else ["--duration", str(args.duration), "--warmup", str(args.warmup)])
    figure = args.figure
    before = ([hashsvc_target("hashsvc (before)", args.home, source=args.before)]
              if args.before else [])
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        workdir = Path(tmp)
        if figure.startswith("scan-hashes"):
            echo = Target("bare gRPC echo", [sys.executable, str(ECHO), "--workers", "2"])
            subject = hashsvc_target("hashsvc", args.home)
            targets = [echo, *before, subject]
            concurrency = args.concurrency or (32 if figure == "scan-hashes" else 8)
            batches = [1] if figure == "scan-hashes" else args.batches
            with serving(targets, workdir):
                for batch in batches:
                    title = f"ScanHashes, {batch} hash{'es' if batch > 1 else ''} per call, " \
                            f"concurrency {concurrency}, 1M PDQ snapshot, 2 workers"
                    print(title, flush=True)
                    samples = measure(
                        targets, ["scan-hashes", *common, "--batch", str(batch),
                                  "--known-hashes", str(known)],
                        args.rounds, args.clients, concurrency, workdir,
                        "hashes_per_second")
                    figures.append(report(title, UNITS[figure], HMA[figure], samples,
                                          echo.label, subject.label))
        else:
            reference = hashsvc_target("hashsvc, reference PDQ", args.home, ["--no-scan-fast-pdq"])
            fast = hashsvc_target("hashsvc, fast PDQ", args.home, ["--scan-fast-pdq"])
            targets = [reference, *before, fast]
            mode = "scan-image" if figure == "scan-image" else "stream"
            concurrency = args.concurrency or (8 if figure == "scan-image" else 2)
            sent = (f"upload corpus {args.corpus}"
                    + (f" (first {args.calls} files)" if args.calls else "")
                    if args.corpus else "~1.6 MP ~360 KB JPEG")
            title = (f"{'ScanImage' if mode == 'scan-image' else 'ScanImages stream'}, "
                     f"{sent}, concurrency {concurrency}, 1M PDQ snapshot, 2 workers")
            print(title, flush=True)
            images = ["--corpus", str(args.corpus)] if args.corpus else IMAGE
            with serving(targets, workdir):
                samples = measure(targets, [mode, *common, *images], args.rounds, args.clients,
                                  concurrency, workdir, "throughput")
            figures.append(report(title, UNITS[figure], HMA[figure], samples,
                                  reference.label, fast.label))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
