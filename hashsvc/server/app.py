"""Assembling and running the gRPC server.

`create_server` binds but does not start, and returns the bound port, so tests can listen on
port 0. `serve` runs until SIGTERM/SIGINT, then drains: health turns NOT_SERVING (load balancers
stop sending), new calls are refused, and calls in flight get `grace` seconds to finish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import faiss
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from hashsvc_client.v1 import admin_pb2, admin_pb2_grpc, scan_pb2, scan_pb2_grpc

from hashsvc import __version__, logs
from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.keys import add_key
from hashsvc.server.admin_service import AdminServicer
from hashsvc.server.interceptors import CallInterceptor, KeyFile
from hashsvc.server.runtime import Runtime
from hashsvc.server.scan_service import ScanServicer

log = logging.getLogger("hashsvc.server")

_MESSAGE_OVERHEAD = 1 << 20  # room for the rest of a ScanImage request around the image
DRAIN_SECONDS = 20.0


def create_server(
    config: ServerConfig, runtime: Runtime
) -> tuple[grpc.Server, int, ThreadPoolExecutor]:
    keys = None if config.insecure_no_auth else KeyFile(config.resolved_keys_file)
    # gRPC itself rejects messages over this with RESOURCE_EXHAUSTED; images up to it but over
    # max_image_bytes get a precise INVALID_ARGUMENT from the decoder instead.
    max_message = config.max_image_bytes + _MESSAGE_OVERHEAD
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.worker_threads, thread_name_prefix="rpc"),
        interceptors=[CallInterceptor(keys)],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),  # one process owns the port (until multi-process serving)
        ],
    )
    stream_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                     thread_name_prefix="stream-item")
    scan_pb2_grpc.add_ScanServiceServicer_to_server(ScanServicer(runtime, stream_pool), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, server)
    reflection.enable_server_reflection((
        scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ), server)
    port = server.add_secure_port(config.listen, _credentials(config)) if config.tls_cert \
        else server.add_insecure_port(config.listen)
    if port == 0:
        raise HashsvcError(f"cannot listen on {config.listen}")
    return server, port, stream_pool


def _credentials(config: ServerConfig) -> grpc.ServerCredentials:
    if config.tls_key is None:
        raise HashsvcError("--tls-cert needs --tls-key")
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],  # type: ignore[union-attr]
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _ensure_keys(config: ServerConfig) -> None:
    """Secure by default with zero configuration: on first start, make an admin key and leave it
    in a 0600 file for the operator, never in a log."""
    if config.insecure_no_auth:
        log.warning("authentication is DISABLED (--insecure-no-auth): anyone who can reach "
                    f"{config.listen} can scan and administer this server")
        return
    keys_file = config.resolved_keys_file
    if keys_file.exists():
        return
    key = add_key(keys_file, "bootstrap-admin", ["admin"])
    key_path = config.home / "bootstrap-admin.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning("no API keys were configured: created admin key 'bootstrap-admin'; read it from "
                "the file, then delete the file", extra={"key_file": str(key_path),
                                                         "keys_file": str(keys_file)})


def serve(config: ServerConfig) -> int:
    logs.configure(config.log_level)
    faiss.omp_set_num_threads(1)  # one thread per query: OpenMP made single queries far slower
    config.home.mkdir(parents=True, exist_ok=True)
    log.info("starting hashsvc", extra={"version": __version__, "config": config.describe()})
    _ensure_keys(config)
    runtime = Runtime(config)
    runtime.start()
    server, port, stream_pool = create_server(config, runtime)
    server.start()
    log.info("serving", extra={"listen": config.listen, "port": port,
                               "tls": config.tls_cert is not None,
                               "mutual_tls": config.tls_client_ca is not None})

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("draining", extra={"signal": signal.Signals(signum).name,
                                    "grace_seconds": DRAIN_SECONDS})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stopping.wait()
    runtime.set_serving(False)
    server.stop(grace=DRAIN_SECONDS).wait()
    stream_pool.shutdown(wait=False, cancel_futures=True)
    runtime.stop()
    log.info("stopped")
    return 0

