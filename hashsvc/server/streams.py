"""What one call may hold, and for how long it may wait on its client.

A call holds an admission slot for as long as it is open, so its cost must not be the client's
to choose:
- `ReadAhead`: requests are read only while fewer than `stream_window` items *and* fewer than
  `stream_buffer_bytes` of requests are held, so a client that sends fast (or that stops taking
  answers) is held back by HTTP/2 flow control instead of filling the server's memory;
- `ClientWatch`: a call whose upload does not arrive, or whose client stops taking answers, is
  ended after `client_idle_timeout` seconds (the wait is inside gRPC, so only a watcher thread
  can see it); a stream that sends nothing while nothing is pending is ended by the servicer
  itself after the same time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

log = logging.getLogger("hashsvc.streams")


class ReadAhead:
    """Items and bytes a stream holds between reading a request and answering it.

    Items are held until their answer is handed to gRPC (so an unread answer stops the reading);
    bytes only until the item is scanned (its request, the large part, is then freed). A single
    request larger than the byte budget is still taken, but only when nothing else is held.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items, self.max_bytes = max(1, max_items), max(1, max_bytes)
        self._items = self._bytes = 0
        self._changed = threading.Condition()

    def wait_for_room(self, active: Callable[[], bool]) -> bool:
        """Before reading a request: wait until one more may be held; False if the call ended."""
        return self._wait(lambda: self._items < self.max_items and self._bytes < self.max_bytes,
                          active)

    def take(self, size: int, active: Callable[[], bool]) -> bool:
        """After reading a request of `size` bytes: hold it once its bytes fit."""
        fits = self._wait(lambda: self._items == 0 or self._bytes + size <= self.max_bytes,
                          active)
        if fits:
            with self._changed:
                self._items += 1
                self._bytes += size
        return fits

    def scanned(self, size: int) -> None:
        self._release(0, size)

    def answered(self) -> None:
        self._release(1, 0)

    def _release(self, items: int, size: int) -> None:
        with self._changed:
            self._items -= items
            self._bytes -= size
            self._changed.notify_all()

    def _wait(self, ready: Callable[[], bool], active: Callable[[], bool]) -> bool:
        with self._changed:
            while not ready():
                self._changed.wait(0.5)
                if not active():
                    return False
        return True


class ClientWatch:
    """Ends calls that have waited on their client longer than `timeout` seconds.

    A call marks each wait that only its client can end (its upload to arrive, an answer to be
    taken) and unmarks it after; gRPC blocks in between, so only another thread can see a wait
    that never ends. One thread checks every call; marking costs a dict update.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[int, tuple[float, grpc.ServicerContext, str]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def waiting(self, token: int, context: grpc.ServicerContext, for_what: str) -> None:
        if self._thread is None:
            self._start()
        self._waiting[token] = (time.monotonic(), context, for_what)

    def done(self, token: int) -> bool:
        """Unmark a wait; False if the watch had already ended the call for it."""
        return self._waiting.pop(token, None) is not None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="client-watch",
                                                daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            for token, (since, context, for_what) in list(self._waiting.items()):
                if now - since > self.timeout and self._waiting.pop(token, None) is not None:
                    log.info("call ended: its client was too slow", extra={
                        "peer": context.peer(), "waited_for": for_what,
                        "client_idle_timeout": self.timeout})
                    # Recorded as DEADLINE_EXCEEDED; the client sees its call cancelled.
                    context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                    context.set_details(f"waited {self.timeout:g} s for {for_what} "
                                        "(client_idle_timeout)")
                    context.cancel()
