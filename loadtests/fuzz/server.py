"""The fuzz inputs through a real server on loopback, as a hostile client sends them.

One data home: the generated hash lists are imported into it (whatever the importer accepts is
stored), a snapshot is published, and `hashsvc serve --workers 1` runs on it. Then, one call at
a time so that each call's memory is its own: every image goes through ScanImage and HashImage,
every stored list's hashes through ScanHashes (an entry that breaks the scans matching it is
found here: issue 12, defect 1), and every hostile hash string through ScanHashes alone.

Status codes map to outcomes: OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED keep the guarantee,
DEADLINE_EXCEEDED is a hang, a server that died is a crash, anything else (UNKNOWN, INTERNAL…)
is `unknown`. Memory is the server process's peak RSS during the call above its RSS before it
(the peak is reset before each call through /proc/PID/clear_refs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from hashsvc_client import Client
from hashsvc_client.errors import HashsvcClientError

from loadtests import processes
from loadtests.fuzz import outcomes
from loadtests.fuzz.hashlines import HashList
from loadtests.fuzz.images import FuzzImage
from loadtests.fuzz.inprocess import Guard, Progress, new_home, run_cli
from loadtests.fuzz.outcomes import Result, Tally
from tests.server_process import ServerProcess

_STATUS = {grpc.StatusCode.OK: outcomes.OK,
           grpc.StatusCode.INVALID_ARGUMENT: outcomes.INVALID_ARGUMENT,
           grpc.StatusCode.RESOURCE_EXHAUSTED: outcomes.RESOURCE_EXHAUSTED,
           grpc.StatusCode.DEADLINE_EXCEEDED: outcomes.HANG}
_HASH_BATCH = 100


class Target:
    """The server, its scan client, and a way to measure one call."""

    def __init__(self, home: Path, guard: Guard) -> None:
        self.home = home
        self.guard = guard
        self.server = ServerProcess(home, "--workers", "1")
        self.client = Client(self.server.target, api_key=self.server.keys["scanner"])
        self.restarts = 0

    def close(self) -> None:
        self.client.close()
        self.server.stop()

    def restart(self) -> None:
        self.close()
        self.restarts += 1
        self.server = ServerProcess(self.home, "--workers", "1")
        self.client = Client(self.server.target, api_key=self.server.keys["scanner"])

    def call(self, name: str, path: str, send: Callable[[Client], Any]) -> Result:
        pid = self.server.pid
        processes.reset_peak(pid)
        # Where the reset is not allowed the peak is the lifetime one: then only a new peak counts.
        before = max(processes.rss_kb(pid) or 0, processes.peak_rss_kb(pid) or 0)
        started = time.perf_counter()
        result = Result(name, path, outcomes.OK)
        try:
            send(self.client)
        except HashsvcClientError as err:
            result.outcome = _STATUS.get(err.code, outcomes.UNKNOWN)
            result.kind = (outcomes.message_kind(err.details)
                           if result.outcome == outcomes.INVALID_ARGUMENT else err.code.name)
            result.message = outcomes.short(err.details)
        except ValueError as err:  # the client cannot even encode it (e.g. a lone surrogate)
            result.outcome, result.kind = outcomes.INVALID_ARGUMENT, "unsendable"
            result.message = outcomes.short(str(err))
        result.seconds = time.perf_counter() - started
        peak = processes.peak_rss_kb(pid)
        result.peak_mb = max(0.0, ((peak or 0) - before) / 1024)
        if not self.server.running:
            result.outcome, result.kind = outcomes.CRASH, "server died"
            result.message = f"the server exited during this call:\n{self.server.log[-2000:]}"
            self.restart()
        elif (result.outcome in outcomes.ACCEPTABLE
              and result.peak_mb > self.guard.memory_budget_mb):
            result.outcome, result.kind = outcomes.MEMORY, "over budget"
            result.message = (f"server peak {result.peak_mb:.0f} MB over the "
                              f"{self.guard.memory_budget_mb:g} MB budget")
        return result


def _scan_image(data: bytes, timeout: float, client: Client) -> Any:
    return client.scan_image(data, timeout=timeout)


def _hash_image(data: bytes, timeout: float, client: Client) -> Any:
    return client.hash_image(data, timeout=timeout)


def _scan_hashes(hashes: Sequence[tuple[str, str]], timeout: float, client: Client) -> Any:
    return client.scan_hashes(hashes, timeout=timeout)


def prepare_home(root: Path, lists: Iterable[HashList], guard: Guard) -> list[HashList]:
    """Import every list (keeping those the importer accepted) and publish a snapshot."""
    home = new_home(root, guard)
    stored = []
    for item in lists:
        path = root / item.filename
        path.write_bytes(item.content)
        argv = ["import", "fuzz", str(path), *(["--algorithm", item.algorithm]
                                               if item.algorithm else [])]
        run, _ = run_cli(home, argv, guard)
        path.unlink()
        if run.value.get("exit") == 0:
            stored.append(item)
    run, text = run_cli(home, ["publish", "--force"], guard)
    if run.value.get("exit") != 0:
        raise RuntimeError(f"publish failed: {text}")
    return stored


def run_server(images: Iterable[FuzzImage], lists: Iterable[HashList],
               hostile: Iterable[tuple[str, str, str]], tally: Tally, guard: Guard, root: Path,
               progress: Progress | None = None) -> None:
    stored = prepare_home(root, lists, guard)  # forks: before any gRPC channel exists
    target = Target(root / "home", guard)
    timeout = guard.hang_seconds
    try:
        for count, item in enumerate(images, 1):
            tally.add(target.call(item.name, "scan", partial(_scan_image, item.data, timeout)),
                      must_refuse="scan" in item.refuse)
            tally.add(target.call(item.name, "hash", partial(_hash_image, item.data, timeout)),
                      must_refuse="hash" in item.refuse)
            if progress is not None:
                progress(count)
        for listed in stored:
            for start in range(0, len(listed.hashes), _HASH_BATCH):
                batch = listed.hashes[start:start + _HASH_BATCH]
                tally.add(target.call(listed.name, "scan-hashes",
                                      partial(_scan_hashes, batch, timeout)))
        for name, algorithm, value in hostile:
            tally.add(target.call(name, "scan-hashes",
                                  partial(_scan_hashes, ((algorithm, value),), timeout)))
    finally:
        target.close()
    if target.restarts:
        tally.notes.append(f"the server was restarted {target.restarts} time(s) after dying")
