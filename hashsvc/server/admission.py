"""Admission: which scan/admin calls may run, decided when they arrive, before their body is read.

Why a pool of our own: gRPC counts a call against `maximum_concurrent_rpcs` from its arrival
until its handler's task ends (body upload and response sending included), while a check inside
the handler only sees calls that already hold a thread and have received their request. With
both, gRPC's limit fired first for most of a burst ("Concurrent RPC limit exceeded!", 118 of
136 refusals), and those refusals reached neither the metrics nor the logs; and calls beyond the
thread pool waited in its queue while their uploads arrived.

So admitted calls run on `AdmissionPool`, which counts a call from the moment gRPC hands it a
task until that task ends, exactly as gRPC would, and the interceptor admits a call only if the
pool has room for it *now*. gRPC asks the interceptor and then submits the call's task on the
same (single) serving thread, so the check and the count cannot race, and an admitted call
never waits for a thread. Everything else (refusals, health checks, reflection) runs on the
server's own small pool and takes microseconds. gRPC's own limit is off, so every refusal is
ours: counted, logged and explained.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Threads beyond the limit: a finished call's thread is released a moment after its count, and
# a call admitted in that moment should not wait for it.
_SPARE_THREADS = 8


class AdmissionPool(ThreadPoolExecutor):
    """The threads of admitted calls; at most `limit` of their tasks exist at once."""

    def __init__(self, limit: int) -> None:
        super().__init__(max_workers=limit + _SPARE_THREADS, thread_name_prefix="rpc")
        self.limit = limit
        self._count_lock = threading.Lock()
        self._outstanding = 0

    @property
    def in_flight(self) -> int:
        return self._outstanding

    def has_room(self) -> bool:
        return self._outstanding < self.limit

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        with self._count_lock:
            self._outstanding += 1
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future[_T] | None) -> None:
        with self._count_lock:
            self._outstanding -= 1


class StreamLimits:
    """Open request streams per API key and per connection.

    Why: a stream holds an admission slot for as long as its client keeps it open, so without
    these one client could open `max_concurrent_rpcs` streams and lock everyone else out. Unary
    calls are not limited per key: they end by themselves, and one platform's key legitimately
    makes most of the calls.
    """

    def __init__(self, per_key: int, per_connection: int) -> None:
        self.per_key, self.per_connection = per_key, per_connection
        self._lock = threading.Lock()
        self._by_key: Counter[str] = Counter()
        self._by_connection: Counter[str] = Counter()

    def open(self, key: str, connection: str) -> str | None:
        """Count a new stream, or say why it may not open (nothing is counted then)."""
        with self._lock:
            if self._by_key[key] >= self.per_key:
                return (f"key {key!r} already has {self.per_key} streams open "
                        "(max_streams_per_key); finish one first")
            if self._by_connection[connection] >= self.per_connection:
                return (f"this connection already has {self.per_connection} streams open "
                        "(max_streams_per_connection); finish one first")
            self._by_key[key] += 1
            self._by_connection[connection] += 1
            return None

    def close(self, key: str, connection: str) -> None:
        with self._lock:
            for counts, name in ((self._by_key, key), (self._by_connection, connection)):
                counts[name] -= 1
                if counts[name] <= 0:
                    del counts[name]
