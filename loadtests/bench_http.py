"""The HTTP/JSON API beside gRPC: image scans/s and hash lookups/s, one server, one run.

    python loadtests/bench_http.py --home /tmp/hashsvc-load-1m
    python loadtests/bench_http.py --home HOME --calls 400 --rounds 3 --concurrency 8

It starts one hashsvc (`--workers 2`, gRPC and HTTP on free loopback ports) over a home that
`make_snapshot.py` built, then measures two figures, each over both protocols in interleaved
rounds (gRPC then HTTP, then HTTP then gRPC, ...) so that both see the same machine:
- `scan-image`: ScanImage of a ~1.6 MP, ~360 KB JPEG (the listed photo, upscaled: every scan
  matches); over HTTP the JPEG is the raw body of `POST /v1/scan/image`, as a platform sends it;
- `scan-hashes`: ScanHashes with one listed PDQ hash (hash lookups); over HTTP its JSON is
  posted to `POST /v1/scan/hashes`.
Every round is exactly `--calls` calls per protocol (no time window: a busy machine makes the
figures small, never empty), made by `--concurrency` threads, each with its own connection: a
keep-alive `http.client` connection, or a gRPC channel with its own subchannel (so that, as
with HTTP, each connection reaches one of the two workers). Each answer must say matched.

Printed per figure and protocol: the median over rounds of calls/s, p50 and p99 latency, the
server's CPU per call (from /proc, steadier than throughput on a shared machine), this client's
CPU per call, errors, and the 1-minute load average at each round's start; then the ratios
HTTP / gRPC of calls/s and of server CPU per call. What HTTP costs beyond gRPC is its gateway
(uvicorn, Starlette, JSON, and one more local gRPC hop per call: see hashsvc/http/__init__.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/bench_http.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc, types_pb2  # noqa: E402

from loadtests.bench_service import (  # noqa: E402
    DEFAULT_HOME,
    IMAGE,
    Target,
    free_port,
    server_cpu_seconds,
    serving,
)
from loadtests.loadgen import default_photo, make_jpeg, read_known_hashes  # noqa: E402
from loadtests.make_snapshot import KNOWN_FILE  # noqa: E402

FIGURES = {"scan-image": "images/s", "scan-hashes": "lookups/s"}
PROTOCOLS = ("gRPC", "HTTP")
TIMEOUT = 60.0  # a hang guard per call, never a measurement
# One call: (ok, status name, matched). Made per thread: it owns the thread's connection.
Call = Callable[[], tuple[bool, str, bool]]


class NoDelayConnection(http.client.HTTPConnection):
    """A keep-alive connection with TCP_NODELAY, as urllib3 (requests) and browsers open them:
    http.client writes a request's headers and body in two sends, and with Nagle's algorithm
    the second may wait for the server's delayed ACK of the first (up to ~40 ms)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Workload:
    key: str
    jpeg: bytes
    hash_hex: str

    def grpc_call(self, figure: str, target: str) -> tuple[Call, Callable[[], None]]:
        # Its own subchannel: channels to one target otherwise share one connection.
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        metadata = (("authorization", f"Bearer {self.key}"),)
        request: Message
        if figure == "scan-image":
            method, request = stub.ScanImage, scan_pb2.ScanImageRequest(image=self.jpeg)
        else:
            method, request = stub.ScanHashes, scan_pb2.ScanHashesRequest(hashes=[types_pb2.Hash(
                algorithm=types_pb2.ALGORITHM_PDQ, hex=self.hash_hex, quality=100)])

        def call() -> tuple[bool, str, bool]:
            try:
                answer = method(request, metadata=metadata, timeout=TIMEOUT)
            except grpc.RpcError as err:
                return False, err.code().name, False
            return True, "OK", bool(answer.result.matched)

        return call, channel.close

    def http_call(self, figure: str, port: int) -> tuple[Call, Callable[[], None]]:
        connection = NoDelayConnection("127.0.0.1", port, timeout=TIMEOUT)
        headers = {"Authorization": f"Bearer {self.key}"}
        if figure == "scan-image":
            path, body = "/v1/scan/image", self.jpeg
            headers["Content-Type"] = "image/jpeg"
        else:
            path = "/v1/scan/hashes"
            body = json.dumps(json_format.MessageToDict(scan_pb2.ScanHashesRequest(hashes=[
                types_pb2.Hash(algorithm=types_pb2.ALGORITHM_PDQ, hex=self.hash_hex,
                               quality=100)]))).encode()
            headers["Content-Type"] = "application/json"

        def call() -> tuple[bool, str, bool]:
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                text = response.read()  # read whole: the connection is then reused
            except (OSError, http.client.HTTPException) as err:
                connection.close()  # the next call connects again
                return False, type(err).__name__, False
            if response.status != 200:
                return False, str(response.status), False
            return True, "OK", bool(json.loads(text)["result"].get("matched"))

        return call, connection.close


def run_round(make_call: Callable[[], tuple[Call, Callable[[], None]]], calls: int,
              concurrency: int, server_cpu: Callable[[], float]) -> dict[str, Any]:
    """Exactly `calls` calls over `concurrency` threads, each with its own connection (opened
    and warmed by one call before the clock starts, so a round measures calls, not connects)."""
    ready = [make_call() for _ in range(concurrency)]
    for call, _ in ready:
        call()
    remaining = [calls]
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    matched = [0]

    def worker(call: Call) -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            started = time.perf_counter()
            ok, status, hit = call()
            elapsed = time.perf_counter() - started
            with lock:
                statuses[status] += 1
                matched[0] += hit
                if ok:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(call,)) for call, _ in ready]
    server, cpu, wall = server_cpu(), time.process_time(), time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server = server_cpu() - server
    for _, close in ready:
        close()
    latencies.sort()
    return {"calls": calls, "ok": len(latencies), "matched": matched[0],
            "errors": {s: n for s, n in statuses.items() if s != "OK"},
            "calls_per_second": len(latencies) / wall if wall else 0.0,
            "p50_ms": 1000 * _quantile(latencies, 0.50),
            "p99_ms": 1000 * _quantile(latencies, 0.99),
            "server_cpu_ms_per_call": 1000 * server / calls,
            "client_cpu_ms_per_call": 1000 * cpu / calls}


def _quantile(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def measure(figure: str, workload: Workload, server: Target, http_port: int, rounds: int,
            calls: int, concurrency: int) -> dict[str, Any]:
    target = f"127.0.0.1:{server.port}"
    makers: dict[str, Callable[[], tuple[Call, Callable[[], None]]]] = {
        "gRPC": lambda: workload.grpc_call(figure, target),
        "HTTP": lambda: workload.http_call(figure, http_port)}
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in PROTOCOLS}
    for number in range(rounds):
        for protocol in PROTOCOLS if number % 2 == 0 else PROTOCOLS[::-1]:
            load = os.getloadavg()[0]
            result = run_round(makers[protocol], calls, concurrency,
                               lambda: server_cpu_seconds(server))
            result["load"] = round(load, 2)
            samples[protocol].append(result)
            print(f"  round {number + 1}: {figure:<11} {protocol:<4} "
                  f"{result['calls_per_second']:>9.1f} {FIGURES[figure]}  p99 "
                  f"{result['p99_ms']:>7.1f} ms  server CPU "
                  f"{result['server_cpu_ms_per_call']:.2f} ms/call  errors "
                  f"{sum(result['errors'].values())}  load {load:.2f}", flush=True)
    return report(figure, samples, calls, concurrency)


def report(figure: str, samples: dict[str, list[dict[str, Any]]], calls: int,
           concurrency: int) -> dict[str, Any]:
    def median(protocol: str, name: str) -> float:
        return float(statistics.median(s[name] for s in samples[protocol]))

    rows = {protocol: {
        "calls_per_second": median(protocol, "calls_per_second"),
        "p50_ms": median(protocol, "p50_ms"), "p99_ms": median(protocol, "p99_ms"),
        "server_cpu_ms_per_call": median(protocol, "server_cpu_ms_per_call"),
        "client_cpu_ms_per_call": median(protocol, "client_cpu_ms_per_call"),
        "calls": sum(s["calls"] for s in runs), "ok": sum(s["ok"] for s in runs),
        "matched": sum(s["matched"] for s in runs),
        "errors": sum(sum(s["errors"].values()) for s in runs),
        "loads": [s["load"] for s in runs]}
        for protocol, runs in samples.items()}
    grpc_row, http_row = rows["gRPC"], rows["HTTP"]
    ratio = (http_row["calls_per_second"] / grpc_row["calls_per_second"]
             if grpc_row["calls_per_second"] else 0.0)
    cpu_ratio = (http_row["server_cpu_ms_per_call"] / grpc_row["server_cpu_ms_per_call"]
                 if grpc_row["server_cpu_ms_per_call"] else 0.0)
    title = (f"{'ScanImage, ~1.6 MP JPEG' if figure == 'scan-image' else 'ScanHashes, 1 hash'}"
             f" per call, {calls} calls a round, concurrency {concurrency}, 2 workers")
    print(f"\n{title} ({time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores)")
    print(f"{'':<6} {FIGURES[figure]:>10} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>11} "
          f"{'client CPU':>11} {'errors':>6}  load averages")
    for protocol, row in rows.items():
        print(f"{protocol:<6} {row['calls_per_second']:>10.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['server_cpu_ms_per_call']:>8.2f} ms "
              f"{row['client_cpu_ms_per_call']:>8.2f} ms {row['errors']:>6}  {row['loads']}")
    print(f"ratio HTTP / gRPC: {ratio:.2f}x {FIGURES[figure]}, {cpu_ratio:.2f}x server CPU per "
          "call\n", flush=True)
    return {"figure": figure, "title": title, "unit": FIGURES[figure], "rows": rows,
            "ratio": round(ratio, 3), "server_cpu_ratio": round(cpu_ratio, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="data home made by make_snapshot.py (default %(default)s)")
    parser.add_argument("--figures", nargs="+", choices=sorted(FIGURES),
                        default=["scan-image", "scan-hashes"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=400, help="calls per round and protocol")
    parser.add_argument("--concurrency", type=int, default=8, help="threads (connections)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    known = args.home / KNOWN_FILE
    key = os.environ.get("HASHSVC_API_KEY")
    key_file = args.home / "bootstrap-admin.key"
    if not known.exists():
        raise SystemExit(f"{args.home} is not a make_snapshot.py home: run\n  python "
                         f"loadtests/make_snapshot.py --home {args.home} --entries 1000000")
    if not (key or key_file.exists()):
        raise SystemExit(f"no key: set HASHSVC_API_KEY to a scan key of {args.home} (`hashsvc "
                         f"keys add NAME --role scan --home {args.home}`), or start `hashsvc "
                         f"serve --home {args.home}` once: it writes bootstrap-admin.key")
    megapixels, quality = float(IMAGE[1]), int(IMAGE[3])
    workload = Workload(key or key_file.read_text().strip(),
                        make_jpeg(default_photo(), megapixels, quality).data,
                        read_known_hashes(known)[0])
    http_port = free_port()
    server = Target("hashsvc", [sys.executable, "-m", "hashsvc", "serve", "--home",
                                str(args.home), "--workers", "2", "--metrics-listen", "",
                                "--http-listen", f"127.0.0.1:{http_port}"])
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, serving([server], Path(tmp)):
        for figure in args.figures:
            figures.append(measure(figure, workload, server, http_port, args.rounds, args.calls,
                                   args.concurrency))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
