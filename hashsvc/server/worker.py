"""One serving process: the gRPC server over a Runtime, run until SIGTERM/SIGINT.

`create_server` binds but does not start, and returns the bound port, so tests can listen on
port 0. `run_worker` serves until a signal, then drains: health turns NOT_SERVING (load balancers
stop sending), new calls are refused, and calls in flight get `DRAIN_SECONDS` to finish.
With several workers (`supervisor.py`) each binds the same port with SO_REUSEPORT and the kernel
spreads connections across them, and `exit_with_supervisor` makes it stop when the supervisor
dies, however it dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.queues import SimpleQueue
from types import FrameType
from typing import TYPE_CHECKING

import faiss
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from hashsvc_client.v1 import admin_pb2_grpc, replica_pb2_grpc, scan_pb2_grpc

from hashsvc import logs
from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.server.admin_service import AdminServicer
from hashsvc.server.admission import AdmissionPool, StreamLimits
from hashsvc.server.exchange_gauges import ExchangeGauges
from hashsvc.server.interceptors import CallInterceptor
from hashsvc.server.live_keys import KeyFile
from hashsvc.server.observe import ScanObserver
from hashsvc.server.ports import AddressInUseError
from hashsvc.server.readiness import ADMIN_SERVICE, SCAN_SERVICE, SERVICES_BY_ROLE
from hashsvc.server.replicas import REPLICA_SERVICE, ReplicaServicer
from hashsvc.server.runtime import Runtime
from hashsvc.server.scan_service import ScanServicer
from hashsvc.server.streams import ClientWatch

if TYPE_CHECKING:
    from hashsvc.http.server import HttpServer

log = logging.getLogger("hashsvc.server")

_MESSAGE_OVERHEAD = 1 << 20  # room for the rest of a ScanImage request around the image
_OTHER_THREADS = 8  # health checks, reflection and refusals: none of them waits on a client
DRAIN_SECONDS = 20.0


def create_server(
    config: ServerConfig, runtime: Runtime, *, reuse_port: bool = False
) -> tuple[grpc.Server, int, ThreadPoolExecutor]:
    keys = None if config.insecure_no_auth else KeyFile(config.resolved_keys_file)
    # gRPC itself rejects messages over this with RESOURCE_EXHAUSTED; images up to it but over
    # max_image_bytes get a precise INVALID_ARGUMENT from the decoder instead.
    max_message = config.max_image_bytes + _MESSAGE_OVERHEAD
    # Admitted scan/admin calls run on the admission pool, a thread each; everything else on
    # the server's own small pool. gRPC's own limit is off: admission is the one gate, so that
    # every refusal is counted (admission.py).
    watch = ClientWatch(config.client_idle_timeout)
    interceptor = CallInterceptor(
        keys, AdmissionPool(config.max_concurrent_rpcs), watch,
        StreamLimits(per_key=config.max_streams_per_key,
                     per_connection=config.max_streams_per_connection))
    runtime.gauge_updaters.append(interceptor.publish_in_flight)
    runtime.store_gauge_updaters.append(ExchangeGauges(runtime.store).update)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=_OTHER_THREADS, thread_name_prefix="rpc-other"),
        interceptors=[interceptor],
        maximum_concurrent_rpcs=None,
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", int(reuse_port)),
            *_connection_age_options(config.max_connection_age),
        ],
    )
    stream_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2,
                                     thread_name_prefix="stream-item")
    # The role decides which services exist here: a scan replica has no AdminService at all, so
    # a call to it gets UNIMPLEMENTED rather than reaching code that would write to the store.
    services = SERVICES_BY_ROLE[config.role]
    if SCAN_SERVICE in services:
        scan_pb2_grpc.add_ScanServiceServicer_to_server(
            ScanServicer(runtime, stream_pool, ScanObserver(runtime.audit), watch), server
        )
    if ADMIN_SERVICE in services:
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
    # Every role: the admin service asks each replica what it serves (replicas.py).
    replica_pb2_grpc.add_ReplicaServiceServicer_to_server(ReplicaServicer(runtime), server)
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, server)
    reflection.enable_server_reflection((
        *services, REPLICA_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ), server)
    try:
        port = server.add_secure_port(config.listen, _credentials(config)) if config.tls_cert \
            else server.add_insecure_port(config.listen)
    except RuntimeError:  # grpc: "Failed to bind to address ..."; the probe (ports.py) ran first
        port = 0
    if port == 0:
        raise AddressInUseError(f"cannot listen on {config.listen}: the address is in use or "
                                "not available here")
    return server, port, stream_pool


def _http_server(config: ServerConfig, server: grpc.Server, *,
                 reuse_port: bool) -> HttpServer | None:
    """The HTTP/JSON API and console, if on: calls reach this gRPC server over a Unix socket in
    a private directory (hashsvc/http/gateway.py), added before the server starts."""
    if not config.resolved_http_listen:
        return None
    from hashsvc.http.gateway import PrivateSocket
    from hashsvc.http.server import HttpServer

    private = PrivateSocket()
    if server.add_insecure_port(private.target) == 0:
        raise HashsvcError(f"cannot listen on {private.target} for the HTTP gateway")
    return HttpServer(config, private.target, reuse_port=reuse_port, private=private,
                      grace=DRAIN_SECONDS)


def _connection_age_options(seconds: float) -> list[tuple[str, int]]:
    """With a limit, each connection is closed (GOAWAY, calls in flight finish first) after
    about that long, so a client re-resolves its target and spreads calls over replicas added
    since it connected; without one a long-lived client never sees a scaled-up replica."""
    if seconds <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(DRAIN_SECONDS * 1000))]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials:
    if config.tls_key is None:
        raise HashsvcError("--tls-cert needs --tls-key")
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],  # type: ignore[union-attr]
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def run_worker(
    config: ServerConfig, *, reuse_port: bool = False, index: int = 0,
    on_ready: Callable[[], None] | None = None, supervisor_pid: int | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or, with `supervisor_pid`, until that process is gone), then
    drain. The caller has configured logging."""
    stopping = threading.Event()
    if supervisor_pid is not None:
        exit_with_supervisor(supervisor_pid, stopping)
    faiss.omp_set_num_threads(1)  # one thread per query: OpenMP made single queries far slower
    runtime = Runtime(config, schedules_syncs=index == 0)
    runtime.start()
    server, port, stream_pool = create_server(config, runtime, reuse_port=reuse_port)
    http = _http_server(config, server, reuse_port=reuse_port)
    server.start()
    http_port = http.start() if http is not None else None
    log.info("worker ready", extra={"worker": index, "pid": os.getpid(), "port": port,
                                    "http_port": http_port})
    if on_ready is not None:
        on_ready()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("draining", extra={"worker": index, "signal": signal.Signals(signum).name,
                                    "grace_seconds": DRAIN_SECONDS})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not reuse_port:
        log.info("serving", extra={"listen": config.listen, "port": port, "workers": 1,
                                   "http_port": http_port,
                                   "tls": config.tls_cert is not None,
                                   "mutual_tls": config.tls_client_ca is not None})
    stopping.wait()
    runtime.readiness.drain()
    if http is not None:
        http.stop()
    server.stop(grace=DRAIN_SECONDS).wait()
    stream_pool.shutdown(wait=False, cancel_futures=True)
    runtime.stop()
    log.info("worker stopped", extra={"worker": index})
    return 0


def worker_main(
    config: ServerConfig, index: int, ready: SimpleQueue[int], supervisor_pid: int
) -> None:
    """Entry point of a spawned worker process (see supervisor.py)."""
    logs.configure(config.log_level)
    raise SystemExit(run_worker(config, reuse_port=True, index=index,
                                on_ready=lambda: ready.put(index), supervisor_pid=supervisor_pid))


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_supervisor(supervisor_pid: int, stopping: threading.Event) -> None:
    """Drain and exit once the supervisor is gone, even if it was SIGKILLed.

    Why: an orphaned worker keeps listening on the shared port and serving, with nobody to
    restart, stop or count it. On Linux the kernel sends SIGTERM (which drains) the moment the
    parent dies (PR_SET_PDEATHSIG); everywhere, and as a backstop, a thread notices within a
    second that the parent process changed (the worker was re-parented). The check right after
    prctl covers a supervisor that died before the request was made.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed; relying on the parent watch",
                        extra={"errno": ctypes.get_errno()})

    def watch() -> None:
        while not stopping.wait(1.0):
            if os.getppid() != supervisor_pid:
                log.error("supervisor is gone; draining", extra={"supervisor": supervisor_pid})
                stopping.set()

    if os.getppid() != supervisor_pid:
        stopping.set()
    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()
