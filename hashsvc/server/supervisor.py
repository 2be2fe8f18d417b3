"""Several worker processes sharing one port, supervised.

- The port is refused if anything is bound to it already, then reserved here (see ports.py) so
  that port 0 resolves to one concrete port that every worker then binds with SO_REUSEPORT; the
  kernel spreads connections across them.
- Workers exit when the supervisor dies, even by SIGKILL (see worker.exit_with_supervisor), so
  no orphan keeps serving a port nobody supervises.
- Workers are *spawned*, not forked: gRPC and OpenMP threads do not survive a fork, and a fresh
  interpreter imports prometheus_client only after PROMETHEUS_MULTIPROC_DIR is set.
- Each worker loads the snapshot itself (memory-mapped, so N workers share one copy in the page
  cache) and hot-reloads on its own.
- A worker that dies unexpectedly is restarted, with a growing delay if it keeps crashing.
- SIGTERM/SIGINT: forwarded to every worker, which drains (in-flight calls finish, new ones are
  refused); workers still running after the grace period are killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.queues import SimpleQueue
from types import FrameType

from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.server.ports import reserve_port

log = logging.getLogger("hashsvc.supervisor")

DRAIN_TIMEOUT = 30.0
READY_TIMEOUT = 120.0
MAX_RESTART_DELAY = 30.0


def supervise(config: ServerConfig) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="hashsvc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before prometheus_client is imported
    try:
        return _supervise(config, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(config: ServerConfig, metrics_dir: str) -> int:
    from prometheus_client import multiprocess

    from hashsvc import metrics
    from hashsvc.server.metrics_http import start_metrics_server
    from hashsvc.server.worker import worker_main

    context = multiprocessing.get_context("spawn")
    count = config.resolved_workers
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("draining workers", extra={"signal": signal.Signals(signum).name})
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with reserve_port(config.listen) as (host, port), _reserve_http(config) as http_listen:
        worker_config = replace(config, listen=f"{host}:{port}", http_listen=http_listen)
        start_metrics_server(config.metrics_listen, multiprocess_dir=metrics_dir)

        ready: SimpleQueue[int] = context.SimpleQueue()

        def start(index: int) -> BaseProcess:
            process = context.Process(target=worker_main,
                                      args=(worker_config, index, ready, os.getpid()),
                                      name=f"hashsvc-worker-{index}")
            process.start()
            return process

        workers = {index: start(index) for index in range(count)}
        _await_ready(ready, workers, count)
        log.info("serving", extra={"listen": config.listen, "port": port, "workers": count,
                                   "http_port": _port_of(http_listen),
                                   "pids": [p.pid for p in workers.values()],
                                   "tls": config.tls_cert is not None})
        crashes = dict.fromkeys(workers, 0)
        while not stopping:
            wait([p.sentinel for p in workers.values()], timeout=0.5)
            for index, process in list(workers.items()):
                if process.is_alive() or stopping:
                    continue
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                crashes[index] += 1
                delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (crashes[index] - 1))
                log.error("worker exited; restarting", extra={
                    "worker": index, "pid": process.pid, "exitcode": process.exitcode,
                    "restart_in_seconds": delay})
                metrics.WORKER_RESTARTS.inc()
                time.sleep(delay)
                if not stopping:
                    workers[index] = start(index)
        for process in workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for process in workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not drain in time; killing", extra={"pid": process.pid})
                process.kill()
                process.join()
    log.info("stopped", extra={"workers": count})
    return 0


@contextlib.contextmanager
def _reserve_http(config: ServerConfig) -> Iterator[str]:
    """The HTTP port, reserved like the gRPC one, as the concrete `http_listen` of the workers
    ("off" when the HTTP API is off)."""
    if not config.resolved_http_listen:
        yield "off"
        return
    with reserve_port(config.resolved_http_listen) as (host, port):
        yield f"{host}:{port}"


def _port_of(listen: str) -> int | None:
    return int(listen.rpartition(":")[2]) if listen != "off" else None


def _await_ready(ready: SimpleQueue[int], workers: dict[int, BaseProcess], count: int) -> None:
    """Block until every worker listens, so "serving" (and readiness) is never announced early."""
    waiting = set(range(count))
    deadline = time.monotonic() + READY_TIMEOUT
    while waiting:
        if time.monotonic() > deadline:
            raise HashsvcError(f"workers {sorted(waiting)} did not start in {READY_TIMEOUT:.0f}s")
        dead = [i for i in waiting if not workers[i].is_alive()]
        if dead:
            raise HashsvcError(f"worker {dead[0]} exited during start-up "
                               f"(exit code {workers[dead[0]].exitcode}); see its log above")
        time.sleep(0.05)
        while not ready.empty():
            waiting.discard(ready.get())
