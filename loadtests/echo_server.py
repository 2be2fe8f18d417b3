"""A bare gRPC Python ScanService that answers every ScanHashes call with a constant response.

    python loadtests/echo_server.py --listen 127.0.0.1:50081 --workers 2 [--aio]

It is the ceiling that `ScanHashes` is measured against: the same proto, the same processes
(SO_REUSEPORT, one per core) and the same gRPC library, with no auth, no search, no metrics and
no logs. Whatever hashsvc loses against it is hashsvc's own per-call work. `--aio` serves with
grpc.aio instead of the thread-pool server. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from hashsvc_client.v1 import scan_pb2

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as `python loadtests/echo_server.py`: find `loadtests`
    sys.path.insert(0, str(_ROOT))

from loadtests.loadgen import check_loopback  # noqa: E402

OPTIONS = [("grpc.so_reuseport", 1)]
RESPONSE = scan_pb2.ScanHashesResponse()
SERVICE = "hashsvc.v1.ScanService"


def _register(server: Any, behavior: Any) -> None:
    """Only ScanHashes (the rest answer UNIMPLEMENTED), registered as generated code does."""
    handlers = {"ScanHashes": grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=scan_pb2.ScanHashesRequest.FromString,
        response_serializer=scan_pb2.ScanHashesResponse.SerializeToString)}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def echo(request: Any, context: Any) -> scan_pb2.ScanHashesResponse:
    return RESPONSE


async def async_echo(request: Any, context: Any) -> scan_pb2.ScanHashesResponse:
    return RESPONSE


def serve_sync(listen: str, threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), options=OPTIONS)
    _register(server, echo)
    server.add_insecure_port(listen)
    server.start()
    server.wait_for_termination()


async def serve_aio(listen: str) -> None:
    server = grpc.aio.server(options=OPTIONS)
    _register(server, async_echo)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def serve(listen: str, aio: bool, threads: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if aio:
        asyncio.run(serve_aio(listen))
    else:
        serve_sync(listen, threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:50081")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=72,
                        help="thread-pool size of the sync server (hashsvc's default: 64 + 8)")
    parser.add_argument("--aio", action="store_true", help="serve with grpc.aio")
    args = parser.parse_args(argv)
    check_loopback(args.listen)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=serve, args=(args.listen, args.aio, args.threads))
                 for _ in range(args.workers)]
    for process in processes:
        process.start()

    def stop(*_: Any) -> None:
        for process in processes:
            process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in processes:
        process.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
