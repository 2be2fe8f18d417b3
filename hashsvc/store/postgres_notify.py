"""Waking a replica the moment the PostgreSQL store changes: LISTEN on one connection of its own.

Why: a replica's watcher reads the store's revision every reload interval, so a change reaches
it after half an interval on average. Every write transaction also sends `NOTIFY` on `CHANNEL`
(PostgreSQL delivers it at commit, and only if the transaction commits), so a watcher waiting
here wakes as soon as the change is visible. The notification is only a wake-up: the revision
row and the change log stay the truth, and the watcher reads them after every wait, woken or
not. A notification lost (the listening connection dropped, the server restarted) therefore
costs at most one reload interval, never a change.

The connection is a dedicated one, not from the pool: it must stay LISTENing between waits,
and a pooled connection is handed to other work (and reset) in between.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from hashsvc.errors import StoreUnavailableError

CHANNEL = "hashsvc_changes"

log = logging.getLogger(__name__)


class ChangeListener:
    """One LISTENing connection, (re)opened on demand; waits are taken one at a time."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], location: str) -> None:
        self._connect = connect  # an autocommit connection, failing with StoreUnavailableError
        self._location = location
        self._conn: psycopg.Connection[Any] | None = None
        self._lost = False  # so that an outage is logged when it starts and ends, not per wait
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> bool:
        """Block until a change is notified (True) or `timeout` seconds pass (False). Never
        raises: a failure drops the connection (the next wait reconnects) and spends the rest
        of the timeout sleeping, so a store that is down is not hammered with connections."""
        deadline = time.monotonic() + timeout
        with self._lock:
            try:
                conn = self._listening()
                woken = False
                for _ in conn.notifies(timeout=max(0.0, deadline - time.monotonic()),
                                       stop_after=1):
                    woken = True
                if woken:  # several commits in a row: one wake-up, the next read sees them all
                    for _ in conn.notifies(timeout=0):
                        pass
                return woken
            except (psycopg.Error, StoreUnavailableError) as err:
                self._drop()
                if not self._lost:
                    log.warning("change notifications from %s lost (%s); replicas fall back "
                                "to reading the revision every reload interval",
                                self._location, str(err).strip().splitlines()[0]
                                if str(err).strip() else type(err).__name__)
                    self._lost = True
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    def _listening(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            try:
                conn.execute(f"LISTEN {CHANNEL}".encode())
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            if self._lost:
                log.info("change notifications from %s resumed", self._location)
                self._lost = False
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
