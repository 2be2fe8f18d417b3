"""One writer at a time across machines: a PostgreSQL session advisory lock, with its holder named.

Why an advisory lock: every process that shares the store reaches the same server, whichever
machine it runs on, so the lock needs no lock file on shared disk and no lease of our own. It is
held by a connection of its own: if the holder dies, the server closes its session and the lock
is free, with nothing to clean up. Why name the holder: "someone else is publishing" is only
useful with who, where and since when (`application_name` says program, host and pid).
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterator
from typing import Any

import psycopg

from hashsvc.errors import WriterBusyError
from hashsvc.store.postgres_schema import LOCK_NAMESPACE


@contextlib.contextmanager
def advisory_writer_lock(
    conn: psycopg.Connection[Any], location: str, name: str, *, wait: float = 0.0
) -> Iterator[None]:
    """Hold lock `name` on `conn` (which this closes) for the block; not free within `wait`
    seconds: a `WriterBusyError` naming the holder."""
    key = zlib.crc32(name.encode()) & 0x7FFFFFFF
    try:
        deadline = time.monotonic() + wait
        while not _try_lock(conn, key):
            if time.monotonic() >= deadline:
                raise WriterBusyError(f"another process holds the {name} lock on {location}: "
                                      f"{_holder(conn, key)}")
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        try:
            yield
        finally:
            with contextlib.suppress(psycopg.Error):  # a lost connection has released it
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, key))
    finally:
        conn.close()


def _try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key)).fetchone()
    return bool(row and row[0])


def _holder(conn: psycopg.Connection[Any], key: int) -> str:
    row = conn.execute(
        "SELECT a.application_name, a.pid, a.client_addr::text, a.backend_start"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (LOCK_NAMESPACE, key)).fetchone()
    if row is None:
        return "it was released meanwhile; try again"
    app, pid, addr, since = row
    return (f"{app or 'an unnamed client'} (server pid {pid}"
            f"{f', from {addr}' if addr else ''}, connected since "
            f"{since:%Y-%m-%d %H:%M:%S %Z})")
