"""A bounded gRPC load generator for hashsvc (asyncio, closed loop), for loopback targets only.

    python loadtests/loadgen.py scan-image  --target 127.0.0.1:50051 --concurrency 8 --duration 20
    python loadtests/loadgen.py scan-hashes --batch 100 --known-hashes HOME/loadtest-known-pdq.txt
    python loadtests/loadgen.py stream --concurrency 2 --json /tmp/stream.json

Modes: `scan-image` (ScanImage, one JPEG per call), `scan-hashes` (ScanHashes, `--batch` PDQ
hashes per call) and `stream` (ScanImages: `--concurrency` bidirectional streams of images).
Each of `--concurrency` workers keeps one call (or one stream) in flight and starts the next as
soon as the last one ends, so the measured latency is what a caller waits and the throughput is
what the server sustains at that concurrency. The workers share `--channels` connections (default:
one each, at most 8): a multi-process server (SO_REUSEPORT) hands each connection to one process,
so a single connection would load a single worker, however high the concurrency.

The run is bounded twice: it stops issuing calls after `--warmup` + `--duration` seconds or after
`--max-requests` calls (stream items), whichever comes first, and every call has a deadline.
`--calls N` bounds the run by work alone: exactly N calls, no warm-up and no time window, so
that a smoke test measures something however busy the machine is (its figures are then over
the whole run, cold start included).
Throughput counts the successful calls that end between the end of the warm-up and the end of the
load; latency percentiles cover the successful calls that start after the warm-up; errors are
counted by gRPC status code over every call that ends after the warm-up. Nothing is retried, so
every error is seen. In `stream` mode a "call" is one item and its latency is the time the item
spends in the pipeline (about `--stream-window` items ahead of it per stream).

It prints a table, then one JSON object (also written to `--json PATH`). Only loopback targets are
accepted: this workplace forbids load against any other address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import ipaddress
import json
import math
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc, types_pb2
from PIL import Image

MODES = ("scan-image", "scan-hashes", "stream")
DATA = Path(os.environ.get("HASHSVC_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
PHOTOS = DATA / "photos-cc0" / "images"
# The photo that `make_snapshot.py` lists, so that the default image (this photo, upscaled) matches.
KNOWN_PHOTO = "00003aeb-ace5-43bf-9a0c-dc31a03e9cd2.jpg"
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class TargetRefused(ValueError):
    """The target is not a loopback address; the message says why."""


class Unreachable(ConnectionError):
    """The server did not accept a connection in time."""


def check_loopback(target: str) -> None:
    """Refuse any target that is not on this machine's loopback (127.0.0.0/8, ::1, localhost).

    The name is resolved and *every* address must be loopback, so a host name that points
    elsewhere is refused too. Only plain HOST:PORT is accepted (no `dns:`/`ipv4:` schemes).
    """
    rule = ("only loopback targets are allowed (127.0.0.0/8, [::1] or localhost, as HOST:PORT): "
            "this workplace forbids load against non-local addresses")
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or "/" in target or (":" in host
                                                              and not target.startswith("[")):
        raise TargetRefused(f"refusing target {target!r}: {rule}")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise TargetRefused(f"refusing target {target!r}: cannot resolve {host!r} ({err}); "
                            f"{rule}") from None
    addresses = {str(info[4][0]) for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if outside:
        where = host if outside == [host] else f"{host} ({', '.join(outside)})"
        raise TargetRefused(f"refusing target {target!r}: {where} is not a loopback address; "
                            f"{rule}")


@dataclass(frozen=True)
class TestImage:
    """The image every ScanImage call and stream item carries, and where it came from."""

    data: bytes
    width: int
    height: int
    source: str

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "bytes": len(self.data), "width": self.width,
                "height": self.height, "megapixels": round(self.width * self.height / 1e6, 2)}


def default_photo() -> Path:
    return PHOTOS / KNOWN_PHOTO


def make_jpeg(photo: Path, megapixels: float = 1.0, quality: int = 90) -> TestImage:
    """Upscale a photo to about `megapixels` and encode it as JPEG: a typical upload, made on the
    spot because the test data holds only small photos (400×533) and is read-only."""
    with Image.open(photo) as original:
        rgb = original.convert("RGB")
    scale = math.sqrt(megapixels * 1e6 / (rgb.width * rgb.height))
    size = (round(rgb.width * scale), round(rgb.height * scale))
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return TestImage(buffer.getvalue(), size[0], size[1],
                     f"{photo} upscaled to {megapixels:g} MP, JPEG q{quality}")


def load_image(path: Path) -> TestImage:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return TestImage(data, image.width, image.height, str(path))


def read_corpus(corpus: Path) -> list[bytes]:
    """The files of an upload corpus (`upload_corpus.py`), in its manifest's order."""
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        raise SystemExit(f"loadgen: {corpus} has no manifest.jsonl (loadtests/upload_corpus.py)")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [(corpus / row["file"]).read_bytes() for row in rows]


def read_known_hashes(path: Path) -> list[str]:
    """PDQ hex hashes known to be in the snapshot (one a line, as make_snapshot.py writes them)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def hash_requests(
    batch: int, known: Sequence[str], match_fraction: float, count: int, seed: int = 1
) -> list[scan_pb2.ScanHashesRequest]:
    """`count` ScanHashes requests to cycle through, built before the run so that the client spends
    its CPU on calls, not on building messages. Each hash is a known one with probability
    `match_fraction` (if any are known), otherwise random: random 256-bit codes are ~128 bits from
    everything, so they exercise the full range search and never match."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        hashes = []
        for _ in range(batch):
            value = (rng.choice(known) if known and rng.random() < match_fraction
                     else rng.randbytes(32).hex())
            hashes.append(types_pb2.Hash(algorithm=types_pb2.ALGORITHM_PDQ, hex=value,
                                         quality=100))
        requests.append(scan_pb2.ScanHashesRequest(hashes=hashes))
    return requests


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Budget:
    """Hands out permission to start a call until the deadline or the request bound is reached.
    (One event loop, one thread: no lock needed.)"""

    stop_at: float
    max_requests: int
    issued: int = 0
    stopped_by: str = ""

    def take(self) -> bool:
        if self.issued >= self.max_requests:
            self.stopped_by = self.stopped_by or "max-requests"
            return False
        if time.perf_counter() >= self.stop_at:
            self.stopped_by = self.stopped_by or "duration"
            return False
        self.issued += 1
        return True


@dataclass
class Recorder:
    """Every call's (or stream item's) start, end and outcome, for the summary to slice."""

    started: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    codes: list[str | None] = field(default_factory=list)  # None: OK
    matched: list[bool] = field(default_factory=list)

    def record(self, started: float, code: str | None, matched: bool = False) -> None:
        self.started.append(started)
        self.ended.append(time.perf_counter())
        self.codes.append(code)
        self.matched.append(matched)


UnaryCall = Callable[..., Awaitable[Any]]


async def unary_worker(
    call: UnaryCall, requests: Sequence[Any], offset: int | None, budget: Budget,
    recorder: Recorder, metadata: tuple[tuple[str, str], ...], timeout: float,
) -> None:
    """One closed-loop caller: the next call starts when the previous one has ended.

    `offset` None: the run's n-th call sends request n (whichever worker makes it), so a run
    of len(requests) calls sends each once: a corpus in its manifest's order."""
    index = offset or 0
    while budget.take():
        request = requests[(index if offset is not None else budget.issued - 1) % len(requests)]
        index += 1
        started = time.perf_counter()
        try:
            response = await call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            recorder.record(started, error.code().name)
        else:
            recorder.record(started, None, response.result.matched)


async def stream_worker(
    stub: Any, image: bytes, budget: Budget, recorder: Recorder,
    metadata: tuple[tuple[str, str], ...], window: int, timeout: float,
) -> None:
    """One ScanImages stream kept `window` items deep; a stream that fails is counted and reopened.

    Per-item latency runs from handing the item to gRPC to reading its answer. `window` must be at
    least the server's `stream_window`: the server answers an item only once it holds that many
    (or the stream is closed), so a shallower client window stalls until the deadline.
    """
    while budget.issued < budget.max_requests and time.perf_counter() < budget.stop_at:
        # A timed run's streams end with it; a call-bounded one's get a deadline per item.
        remaining = (budget.stop_at - time.perf_counter() if math.isfinite(budget.stop_at)
                     else timeout * (budget.max_requests - budget.issued))
        call = stub.ScanImages(metadata=metadata, timeout=max(remaining, 0) + timeout)
        sent: dict[str, float] = {}
        slots = asyncio.Semaphore(window)

        async def write(call: Any = call, sent: dict[str, float] = sent,
                        slots: asyncio.Semaphore = slots) -> None:
            number = 0
            while True:
                await slots.acquire()
                if not budget.take():
                    break
                item_id = str(number)
                request = scan_pb2.ScanImagesRequest(id=item_id, image=image)
                sent[item_id] = time.perf_counter()
                await call.write(request)
                number += 1
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                started = sent.pop(response.id)
                slots.release()
                if response.HasField("error"):
                    recorder.record(started, _STATUS_NAMES.get(response.error.code,
                                                               str(response.error.code)))
                else:
                    recorder.record(started, None, response.result.matched)
            await writer
        except grpc.RpcError as error:
            writer.cancel()
            # A write after the call has ended raises InvalidStateError rather than RpcError.
            with contextlib.suppress(asyncio.CancelledError, asyncio.InvalidStateError,
                                     grpc.RpcError):
                await writer
            code = error.code().name
            for started in sent.values():  # items lost with the stream
                recorder.record(started, code)
            await asyncio.sleep(0.05)  # a failing server should not be hammered in a tight loop


def percentile(sorted_values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (an observed value, never an interpolation)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Settings:
    mode: str
    target: str
    api_key: str | None
    concurrency: int
    channels: int
    duration: float
    warmup: float
    max_requests: int
    calls: int | None  # exactly this many calls, with no time bound (see --calls)
    batch: int
    stream_window: int
    timeout: float
    image: TestImage | None
    known_hashes: list[str]
    match_fraction: float
    corpus: list[bytes] = field(default_factory=list)  # scan-image: these, not `image`


async def run(settings: Settings) -> dict[str, Any]:
    """Drive the server for warm-up + duration (or max-requests) and summarise what was measured."""
    metadata = (("authorization", f"Bearer {settings.api_key}"),) if settings.api_key else ()
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20),
               ("grpc.enable_retries", 0),  # a load test must see every error, not retry it
               # Without this, channels to one target share a connection (gRPC's global
               # subchannel pool), and --channels would open only one.
               ("grpc.use_local_subchannel_pool", 1)]
    load_start = os.getloadavg()
    async with contextlib.AsyncExitStack() as stack:
        channels = [await stack.enter_async_context(
                        grpc.aio.insecure_channel(settings.target, options))
                    for _ in range(settings.channels)]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)),
                                   timeout=10)
        except TimeoutError:
            raise Unreachable(f"no server answered at {settings.target} within 10 s") from None
        stubs = [scan_pb2_grpc.ScanServiceStub(channel) for channel in channels]
        cpu_started = time.process_time()
        started = time.perf_counter()
        budget = (Budget(math.inf, settings.calls) if settings.calls
                  else Budget(started + settings.warmup + settings.duration,
                              settings.max_requests))
        recorder = Recorder()
        workers: list[Awaitable[None]] = []
        requests: Sequence[Any] = []
        if settings.mode == "scan-image" and settings.corpus:
            requests = [scan_pb2.ScanImageRequest(image=data) for data in settings.corpus]
        elif settings.mode == "scan-image":
            assert settings.image is not None
            requests = [scan_pb2.ScanImageRequest(image=settings.image.data)]
        elif settings.mode == "scan-hashes":
            # At most ~100k hashes prebuilt: 512 calls of 10,000 took longer than a run.
            count = min(512, settings.max_requests, max(8, 100_000 // settings.batch))
            requests = hash_requests(settings.batch, settings.known_hashes,
                                     settings.match_fraction, max(1, count))
        for i in range(settings.concurrency):
            stub = stubs[i % len(stubs)]  # workers spread evenly over the connections
            if settings.mode == "stream":
                assert settings.image is not None
                workers.append(stream_worker(stub, settings.image.data, budget, recorder,
                                             metadata, settings.stream_window, settings.timeout))
            else:
                call = stub.ScanImage if settings.mode == "scan-image" else stub.ScanHashes
                offset = None if settings.corpus else i * 997
                workers.append(unary_worker(call, requests, offset, budget, recorder, metadata,
                                            settings.timeout))
        # Every call has a deadline, so this bound is only a last resort against a hung channel.
        hard_limit = (settings.timeout * settings.calls if settings.calls
                      else settings.warmup + settings.duration) + settings.timeout + 30
        await asyncio.wait_for(asyncio.gather(*workers), timeout=hard_limit)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return summarise(settings, budget, recorder, started, wall, cpu, load_start)


def summarise(
    settings: Settings, budget: Budget, recorder: Recorder, started: float, wall: float,
    cpu: float, load_start: tuple[float, float, float],
) -> dict[str, Any]:
    """Throughput: OK calls that *ended* inside the measured window (warm-up end to load end),
    so that calls queued during the warm-up do not skew it; latency: OK calls that *started*
    after the warm-up; errors: every call that ended after the warm-up."""
    window_start = started + settings.warmup
    ended_after_warmup = [e for e in recorder.ended if e >= window_start]
    if budget.stopped_by == "max-requests":
        window_end = max(ended_after_warmup, default=window_start)
    else:
        window_end = budget.stop_at
    window = window_end - window_start
    rows = list(zip(recorder.started, recorder.ended, recorder.codes, recorder.matched,
                    strict=True))
    in_window = [r for r in rows if window_start <= r[1] <= window_end]
    ok = sum(1 for r in in_window if r[2] is None)
    throughput = ok / window if window > 0 else 0.0
    latencies = sorted((end - start) * 1000 for start, end, code, _ in rows
                       if start >= window_start and code is None)
    errors = Counter(code for _, end, code, _ in rows if end >= window_start and code)
    result: dict[str, Any] = {
        "mode": settings.mode,
        "target": settings.target,
        "concurrency": settings.concurrency,
        "channels": settings.channels,
        "unit": "items" if settings.mode == "stream" else "calls",
        "warmup_seconds": settings.warmup,
        "duration_seconds": round(window, 3),
        "requests": len(in_window),
        "ok": ok,
        "throughput_per_second": round(throughput, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(latencies[-1], 2) if latencies else 0.0,
            "mean": round(sum(latencies) / len(latencies), 2) if latencies else 0.0,
        },
        "latency_samples": len(latencies),
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "matched": sum(1 for r in in_window if r[3]),
        "issued_total": budget.issued,
        "stopped_by": budget.stopped_by or "duration",
        "client_cpu_percent_of_one_core": round(100 * cpu / wall, 1) if wall else 0.0,
        "load_average_1m": {"start": round(load_start[0], 2),
                            "end": round(os.getloadavg()[0], 2)},
        "cpus": os.cpu_count(),
    }
    if settings.mode == "scan-hashes":
        result["batch"] = settings.batch
        result["hashes"] = ok * settings.batch
        result["hashes_per_second"] = round(throughput * settings.batch, 1)
        result["known_hashes"] = len(settings.known_hashes)
        result["match_fraction"] = settings.match_fraction if settings.known_hashes else 0.0
    if settings.mode == "stream":
        result["items"] = len(in_window)
        result["stream_window"] = settings.stream_window
    if settings.corpus:
        result["corpus"] = {"files": len(settings.corpus),
                            "bytes": sum(len(data) for data in settings.corpus)}
    elif settings.image is not None and settings.mode != "scan-hashes":
        result["image"] = settings.image.describe()
    return result


def table(result: dict[str, Any]) -> str:
    unit = result["unit"]
    head = (f"{'mode':<12} {'conc':>4} {'chan':>4} {unit:>8} {'errors':>6} {unit + '/s':>9}"
            f" {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    lat = result["latency_ms"]
    row = (f"{result['mode']:<12} {result['concurrency']:>4} {result['channels']:>4}"
           f" {result['requests']:>8}"
           f" {result['error_count']:>6} {result['throughput_per_second']:>9.1f}"
           f" {lat['p50']:>8.1f} {lat['p90']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f}")
    lines = [head, row]
    if "hashes_per_second" in result:
        lines.append(f"batch {result['batch']}: {result['hashes_per_second']:.1f} hashes/s")
    lines.append(f"matched {result['matched']}; errors "
                 f"{json.dumps(result['errors']) if result['errors'] else 'none'}; "
                 f"measured {result['duration_seconds']} s after {result['warmup_seconds']} s "
                 f"warm-up; stopped by {result['stopped_by']}; client CPU "
                 f"{result['client_cpu_percent_of_one_core']}% of a core; load average "
                 f"{result['load_average_1m']['start']} -> {result['load_average_1m']['end']}")
    return "\n".join(lines)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--target", default=os.environ.get("HASHSVC_SERVER", "127.0.0.1:50051"),
                        help="HOST:PORT on loopback (default $HASHSVC_SERVER or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("HASHSVC_API_KEY"),
                        help="a key with the scan role (default $HASHSVC_API_KEY)")
    parser.add_argument("--concurrency", type=_positive(int), default=8,
                        help="calls (streams, for `stream`) in flight (default %(default)s)")
    parser.add_argument("--channels", type=_positive(int),
                        help="gRPC connections, the workers spread over them (default: "
                             "concurrency, at most 8). One HTTP/2 connection reaches one server "
                             "process, so a multi-worker server needs several to be loaded fully")
    parser.add_argument("--duration", type=_positive(float), default=10.0,
                        help="measured seconds, after the warm-up (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before measuring (default %(default)s)")
    parser.add_argument("--max-requests", type=_positive(int), default=1_000_000,
                        help="hard bound on calls (stream items), warm-up included "
                             "(default %(default)s)")
    parser.add_argument("--calls", type=_positive(int),
                        help="make exactly this many calls (stream items) and stop, with no "
                             "warm-up and no time bound: --duration, --warmup and "
                             "--max-requests are ignored (smoke tests and CI)")
    parser.add_argument("--batch", type=_positive(int), default=1,
                        help="scan-hashes: hashes per call, 1-10000 (default %(default)s)")
    parser.add_argument("--known-hashes", type=Path,
                        help="scan-hashes: PDQ hex hashes in the snapshot, one a line "
                             "(make_snapshot.py writes HOME/loadtest-known-pdq.txt)")
    parser.add_argument("--match-fraction", type=float, default=0.1,
                        help="scan-hashes: share of hashes drawn from --known-hashes "
                             "(default %(default)s)")
    parser.add_argument("--image", type=Path,
                        help="scan-image/stream: the image to send (default: a photo from "
                             "photos-cc0 upscaled to --megapixels, JPEG --quality)")
    parser.add_argument("--corpus", type=Path,
                        help="scan-image: send the files of this upload corpus "
                             "(loadtests/upload_corpus.py) in its manifest's order, call n "
                             "the n-th file, cycling; instead of --image")
    parser.add_argument("--megapixels", type=_positive(float), default=1.0,
                        help="size of the default image (default %(default)s; 1.6 with "
                             "--quality 98 makes the issue's ~360 KB upload)")
    parser.add_argument("--quality", type=_positive(int), default=90,
                        help="JPEG quality of the default image (default %(default)s)")
    parser.add_argument("--stream-window", type=_positive(int), default=16,
                        help="stream: items in flight per stream; at least the server's "
                             "stream_window (8), or the stream stalls (default %(default)s)")
    parser.add_argument("--timeout", type=_positive(float), default=30.0,
                        help="deadline of each call in seconds (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result object to this file")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if not 1 <= args.batch <= 10_000:
        parser.error("--batch must be 1..10000 (the server's limit per ScanHashes call)")
    if not 0 <= args.match_fraction <= 1:
        parser.error("--match-fraction must be within 0..1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_loopback(args.target)
    except TargetRefused as err:
        print(f"loadgen: {err}", file=sys.stderr)
        return 2
    image: TestImage | None = None
    corpus: list[bytes] = []
    if args.corpus:
        if args.mode != "scan-image":
            print("loadgen: --corpus is for scan-image", file=sys.stderr)
            return 2
        corpus = read_corpus(args.corpus)
        print(f"corpus: {len(corpus)} files, {sum(map(len, corpus)):,} bytes, from {args.corpus}",
              flush=True)
    elif args.mode != "scan-hashes":
        image = (load_image(args.image) if args.image
                 else make_jpeg(default_photo(), args.megapixels, args.quality))
        info = image.describe()
        print(f"image: {info['width']}x{info['height']} ({info['megapixels']} MP), "
              f"{info['bytes']:,} bytes, from {info['source']}", flush=True)
    known = read_known_hashes(args.known_hashes) if args.known_hashes else []
    if args.mode == "scan-hashes" and not known:
        print("note: no --known-hashes given: every hash is random, so no call will match",
              flush=True)
    if not args.api_key:
        print("note: no API key (--api-key / $HASHSVC_API_KEY): calls will be UNAUTHENTICATED "
              "unless the server runs --insecure-no-auth", file=sys.stderr)
    settings = Settings(
        mode=args.mode, target=args.target, api_key=args.api_key,
        concurrency=args.concurrency, channels=min(args.channels or 8, args.concurrency),
        duration=args.duration, warmup=0.0 if args.calls else args.warmup,
        max_requests=args.calls or args.max_requests, calls=args.calls, batch=args.batch,
        stream_window=args.stream_window,
        timeout=args.timeout, image=image, known_hashes=known,
        match_fraction=args.match_fraction, corpus=corpus,
    )
    try:
        result = asyncio.run(run(settings))
    except Unreachable as err:
        print(f"loadgen: {err}", file=sys.stderr)
        return 3
    except TimeoutError:
        print("loadgen: the run overran its hard time limit (a hung channel?)", file=sys.stderr)
        return 3
    print(table(result))
    text = json.dumps(result)
    print(text, flush=True)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
