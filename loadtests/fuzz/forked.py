"""Run one piece of work in a forked child: a hang guard, a memory cap and the child's own peak.

Why a child per input: a decoder that loops forever, segfaults or allocates gigabytes must cost
one input, not the run, and the peak memory of *that* input is only measurable in a process of
its own (`wait4` returns the child's `ru_maxrss`). Forking a parent that already imported Pillow,
NumPy and hashsvc costs a few milliseconds, against ~1 s for a fresh interpreter.

The parent must not hold threads or open SQLite connections when it forks (the fuzz modes that
fork run before any gRPC channel is opened).
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests import processes

Work = Callable[[], dict[str, Any]]


@dataclass
class ChildRun:
    """What the parent saw of one child."""

    value: dict[str, Any] = field(default_factory=dict)  # what the work returned
    timed_out: bool = False
    signal: int | None = None  # the signal that ended the child, if one did
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_mb: float = 0.0  # the child's peak RSS above its RSS when the work began

    @property
    def crashed(self) -> bool:
        return self.signal is not None and not self.timed_out


def run_forked(
    work: Work, *, timeout: float, memory_cap_mb: float | None = None, quiet: bool = False
) -> ChildRun:
    """`work()` in a child killed after `timeout` seconds; its address space grows at most
    `memory_cap_mb` beyond what it inherited (an allocation past that raises MemoryError).
    `quiet`: the child's stdout and stderr go to /dev/null (libtiff and libjpeg print warnings
    for broken files, thousands of lines in a long run)."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        if quiet:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
        _child(work, write_end, memory_cap_mb)
    os.close(write_end)
    run = ChildRun()
    chunks: list[bytes] = []
    deadline = started + timeout
    try:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                run.timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([read_end], [], [], remaining)
            if ready:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status, usage = os.wait4(pid, 0)
    run.seconds = time.perf_counter() - started
    run.cpu_seconds = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        run.signal = os.WTERMSIG(status)
    if chunks and not run.timed_out:
        try:
            run.value = json.loads(b"".join(chunks))
        except json.JSONDecodeError:
            run.value = {}
    baseline_kb = int(run.value.get("rss0_kb", 0))
    run.peak_mb = max(0.0, (usage.ru_maxrss - baseline_kb) / 1024) if baseline_kb else 0.0
    return run


def _child(work: Work, write_end: int, memory_cap_mb: float | None) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        baseline = processes.rss_kb(os.getpid()) or 0
        if memory_cap_mb is not None:
            size_kb = processes.virtual_kb(os.getpid()) or 0
            cap = int((size_kb + memory_cap_mb * 1024) * 1024)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            value = work()
        except BaseException as err:  # reported, never raised: the parent classifies it
            value = {"exception": type(err).__name__, "message": str(err)[:2000],
                     "traceback": traceback.format_exc(limit=6)[-4000:]}
        value["rss0_kb"] = baseline
        data = json.dumps(value).encode()
        while data:
            data = data[os.write(write_end, data):]
    except BaseException:
        code = 70
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                code = code or 71
        os._exit(code)
