"""The source of truth in a shared PostgreSQL database: banks, entries, revision, change feed.

Why PostgreSQL: a SQLite file serves one machine; a second node (an admin beside scan replicas,
or a standby) needs a store it can reach over the network, with the same promises. Each write is
one transaction that first bumps the `revision` row: that row lock makes writers take turns, so
revisions commit in order and a reader that sees revision R sees every change stamped <= R,
which is what `changes_since` (the live delta of every replica) relies on. Reads that must be one
consistent view (`changes_since`, `iter_active_entries`) run in a REPEATABLE READ transaction.

Connections come from a psycopg pool, so that a server's many threads share a few connections;
each names its process in `application_name`, which is how `writer_lock` names a lock's holder.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from hashsvc.errors import (
    NotFoundError,
    StoreUnavailableError,
)
from hashsvc.limits import LIMITS, check_text, quote
from hashsvc.store import exchange_sql
from hashsvc.store.base import redact
from hashsvc.store.model import (
    EntrySelector,
    StoreChanges,
    StoreStats,
)
from hashsvc.store.postgres_bulk import PostgresBulkAdder
from hashsvc.store.postgres_lock import advisory_writer_lock
from hashsvc.store.postgres_notify import CHANNEL, ChangeListener
from hashsvc.store.postgres_retry import (
    ATTEMPTS,
    BEGIN_WRITE,
    AlreadyApplied,
    ReplayingBulkAdder,
    already_applied,
    is_retryable,
    new_operation_key,
    record_result,
    with_retries,
)
from hashsvc.store.postgres_schema import migrate
from hashsvc.store.selectors import _selector_sql, reason_sql
from hashsvc.store.sql_base import Dialect, SqlStoreBase, T

CONNECT_TIMEOUT = 10  # seconds: an unreachable server fails a command, it does not hang it
POOL_SIZE = 8  # a server's threads share these; an import holds one for its duration
POOL_WAIT = 15.0  # seconds a call waits for a connection: a PostgreSQL restart costs a wait


def application_name() -> str:
    """Who this connection is, in pg_stat_activity: program, host and pid (63 bytes at most)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "-m", "-c"):
        program = "python"
    return f"hashsvc {program} {socket.gethostname()} pid {os.getpid()}"[:63]


def _first_line(err: BaseException, secret: str | None) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text.replace(secret, "***") if secret else text


def _password(url: str) -> str | None:
    """The URL's password, to be scrubbed from any message that might echo it."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


class PostgresStore(SqlStoreBase):
    """Banks and entries in a PostgreSQL database, one transaction per write. Thread-safe."""

    dialect = Dialect(mark="%s", integrity_error=pg_errors.UniqueViolation,
                      revision_sql="(SELECT value::bigint FROM meta WHERE key = 'revision')",
                      name_order='b.name COLLATE "C"', flag=bool)

    def __init__(self, url: str, *, pool_wait: float = POOL_WAIT) -> None:
        self._url = url
        self._location = redact(url)
        self._secret = _password(url)
        self._kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT,
                                        "application_name": application_name()}
        # One direct connection first: it fails with the server's own reason (the pool would
        # only time out), and it applies the migrations before any other query.
        with self._connect() as conn:
            try:
                migrate(conn, self._location)
            except psycopg.Error as err:  # e.g. a role that may not create tables
                raise StoreUnavailableError(
                    f"cannot prepare PostgreSQL store {self._location}: "
                    f"{_first_line(err, self._secret)}") from None
        # `check`: a connection is tested as it leaves the pool, so after a PostgreSQL restart
        # the stale ones are replaced instead of failing the next call.
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url, kwargs=self._kwargs, min_size=1, max_size=POOL_SIZE, open=True,
            name="hashsvc-store", check=ConnectionPool.check_connection, timeout=pool_wait)
        self._listener = ChangeListener(self._connect, self._location)  # opened on first wait

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, **self._kwargs)
        except (psycopg.Error, ValueError) as err:  # ValueError: a malformed URL or option
            raise StoreUnavailableError(
                f"cannot open PostgreSQL store {self._location}: "
                f"{_first_line(err, self._secret)}") from None

    @property
    def target(self) -> str:
        return self._url

    @property
    def location(self) -> str:
        return self._location

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; psycopg's errors pass through (see `_errors`, `_retried`)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailableError(
                f"PostgreSQL store {self._location}: no connection within "
                f"{self._pool.timeout:g} s (server down or unreachable?)") from None

    @contextmanager
    def _errors(self, *, retried: bool = False) -> Iterator[None]:
        """psycopg's errors as one line naming the store, never a traceback; a constraint
        violation stays the caller's to interpret (a bank name already taken)."""
        try:
            yield
        except pg_errors.IntegrityError:
            raise
        except psycopg.Error as err:  # down, restarted, refused
            tries = f" (after {ATTEMPTS} tries)" if retried and is_retryable(err) else ""
            raise StoreUnavailableError(f"PostgreSQL store {self._location}: "
                                        f"{_first_line(err, self._secret)}{tries}") from None

    def _retried(self, kind: str, attempt: Callable[[int], T]) -> T:
        with self._errors(retried=True):
            return with_retries(kind, attempt)

    @contextmanager
    def _write(self, key: str | None = None) -> Iterator[tuple[psycopg.Connection[Any], int]]:
        """One write transaction, with the revision it bumped; rolled back on any exception.
        With an operation `key`, raises `AlreadyApplied` if a write of that key committed."""
        with self._conn() as conn, conn.transaction():
            # Bump, NOTIFY (a listener's wake-up, postgres_notify.py) and claim, in one statement.
            row = conn.execute(BEGIN_WRITE, {"key": key, "channel": CHANNEL}).fetchone()
            assert row is not None
            if not row[2]:
                raise already_applied(conn, str(key))
            yield conn, int(row[0])

    def _transact(self, body: Callable[[psycopg.Connection[Any], int], T]) -> T:
        """`body(connection, revision)` as one write transaction, re-run on a lost connection
        and applied exactly once (postgres_retry.py); `body` returns JSON-able data."""
        key = new_operation_key()

        def attempt(_: int) -> T:
            try:
                with self._write(key) as (conn, revision):
                    result = body(conn, revision)
                    record_result(conn, key, result)
                    return result
            except AlreadyApplied as done:
                return cast(T, done.result)

        return self._retried("write", attempt)

    def _in_write(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self._transact(lambda conn, _: body(conn))

    def _in_side_write(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Not re-run on a lost connection: what it writes is bookkeeping whose loss the next
        sync repairs, and counts added twice would be wrong."""
        with self._errors(), self._conn() as conn, conn.transaction():
            return body(conn)

    def _read(self, body: Callable[[psycopg.Connection[Any]], T], *, snapshot: bool = False) -> T:
        """`body(connection)`, re-run on a lost connection; `snapshot`: in one REPEATABLE READ
        read-only transaction, for several statements that must see one state."""

        def attempt(_: int) -> T:
            if not snapshot:
                with self._conn() as conn:
                    return body(conn)
            with self._snapshot_read() as conn:
                return body(conn)

        return self._retried("read", attempt)

    @contextmanager
    def _snapshot_read(self) -> Iterator[psycopg.Connection[Any]]:
        """One consistent read-only view for several statements."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._read(lambda conn: conn.execute(sql.encode(), args).fetchall())

    def revision(self) -> int:
        return int(self._rows("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    def wait_for_change(self, timeout: float) -> bool:
        return self._listener.wait(timeout)

    # ---- banks (the rest are `SqlStoreBase`') -------------------------------------------------

    def delete_bank(self, name: str) -> int:
        bank = self.get_bank(name)

        def delete(conn: psycopg.Connection[Any], revision: int) -> None:
            conn.execute("INSERT INTO removed_entries (entry_id, rev) SELECT id, %s FROM entries"
                         " WHERE bank_id = %s ON CONFLICT (entry_id) DO UPDATE SET rev = %s",
                         (revision, bank.id, revision))
            conn.execute("DELETE FROM entries WHERE bank_id = %s", (bank.id,))
            conn.execute("DELETE FROM banks WHERE id = %s", (bank.id,))

        self._transact(delete)
        return bank.entry_count

    # ---- entries -----------------------------------------------------------------------------

    @contextmanager
    def bulk_add(self, bank_name: str, *, expected: int = 0) -> Iterator[ReplayingBulkAdder]:
        """Add many entries in one transaction (COPY, see `PostgresBulkAdder`): all of them
        land, or (on any error) none do. `expected` (an estimate of the rows to come) lets a
        large import into a small store rebuild the indexes once (see `PostgresBulkAdder`).
        A lost connection re-runs the transaction (`ReplayingBulkAdder`)."""
        bank = self.get_bank(bank_name)

        @contextmanager
        def begin(key: str) -> Iterator[tuple[psycopg.Connection[Any], PostgresBulkAdder]]:
            with self._write(key) as (conn, revision):
                # Entries have no foreign key (its per-row check cost more than the insert):
                # the bank is checked here instead, under the revision lock every writer takes.
                if conn.execute("SELECT 1 FROM banks WHERE id = %s",
                                (bank.id,)).fetchone() is None:
                    raise NotFoundError(f"no bank named {quote(bank_name)}")
                yield conn, PostgresBulkAdder(conn, bank.id, revision, expected=expected)

        with self._errors(retried=True):
            adder = ReplayingBulkAdder(begin, expected=expected, location=self._location)
            try:
                yield adder
                adder.commit()
            finally:
                adder.close()

    def set_disabled(
        self, bank_name: str, selector: EntrySelector, disabled: bool, reason: str | None = None
    ) -> int:
        if reason is not None:
            check_text(reason, "reason", LIMITS.reason_chars)
        bank = self.get_bank(bank_name)
        clauses = list(_selector_sql(bank.id, selector, alias="", mark="%s"))

        def update(conn: psycopg.Connection[Any], revision: int) -> int:
            return sum(conn.execute(
                f"UPDATE entries SET disabled = %s, disabled_reason = {reason_sql(disabled, '%s')},"
                f" changed_rev = %s {where}".encode(),
                (disabled, reason if disabled else None, revision, *args)).rowcount
                for where, args in clauses)

        return self._transact(update)

    def remove_entries(self, bank_name: str, selector: EntrySelector) -> int:
        bank = self.get_bank(bank_name)
        clauses = list(_selector_sql(bank.id, selector, alias="", mark="%s"))

        def remove(conn: psycopg.Connection[Any], revision: int) -> int:
            removed = 0
            for where, args in clauses:
                conn.execute(f"INSERT INTO removed_entries (entry_id, rev) SELECT id, %s"
                             f" FROM entries {where} ON CONFLICT (entry_id)"
                             f" DO UPDATE SET rev = EXCLUDED.rev".encode(), (revision, *args))
                removed += conn.execute(f"DELETE FROM entries {where}".encode(), args).rowcount
            return removed

        return self._transact(remove)

    def iter_active_entries(self, batch: int = 100_000) -> Iterator[list[tuple[Any, ...]]]:
        """As `SqliteStore.iter_active_entries`: one consistent view, streamed through a
        server-side cursor so that a 10M-entry store is never held in memory at once. Not
        retried: the batches already yielded cannot be taken back (a publish is run again)."""
        with self._errors(), self._snapshot_read() as conn, \
                conn.cursor(name="active_entries") as cursor:
            cursor.execute(
                "SELECT e.id, e.bank_id, e.algorithm, e.hash, e.external_id, e.metadata,"
                " e.variant FROM entries e JOIN banks b ON b.id = e.bank_id"
                " WHERE NOT e.disabled AND b.enabled ORDER BY e.id")
            while rows := cursor.fetchmany(batch):
                yield [(r[0], r[1], r[2], bytes(r[3]), *r[4:]) for r in rows]

    def changes_since(self, revision: int) -> StoreChanges:
        """As `SqliteStore.changes_since`, in one REPEATABLE READ transaction."""

        def read(conn: psycopg.Connection[Any]
                 ) -> tuple[int, list[Any], list[int], list[Any]]:
            current = int(conn.execute(
                "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])  # type: ignore[index]
            rows = conn.execute(
                "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata,"
                " e.variant, NOT e.disabled AND b.enabled"
                " FROM entries e JOIN banks b ON b.id = e.bank_id WHERE e.changed_rev > %s",
                (revision,)).fetchall()
            removed = [r[0] for r in conn.execute(
                "SELECT entry_id FROM removed_entries WHERE rev > %s", (revision,))]
            provenance = conn.execute(exchange_sql.CHANGED_PROVENANCE_SQL.replace("?", "%s"),
                                      (revision,)).fetchall()
            return current, rows, removed, provenance

        current, rows, removed, provenance = self._read(read, snapshot=True)
        return StoreChanges(
            revision=current,
            changed=frozenset([r[0] for r in rows] + removed),
            active=[(r[0], r[1], r[2], bytes(r[3]), *r[4:7]) for r in rows if r[7]],
            provenance=exchange_sql.provenance_texts(provenance),
        )

    def stats(self) -> StoreStats:
        def read(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int, list[Any]]:
            revision = int(conn.execute(
                "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])  # type: ignore[index]
            entries, disabled = conn.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE disabled) FROM entries").fetchone()  # type: ignore[misc]
            banks = conn.execute("SELECT COUNT(*) FROM banks").fetchone()[0]  # type: ignore[index]
            grouped = conn.execute(
                "SELECT b.name, e.algorithm, COUNT(*),"
                " COUNT(*) FILTER (WHERE NOT e.disabled AND b.enabled)"
                " FROM entries e JOIN banks b ON b.id = e.bank_id GROUP BY b.name, e.algorithm"
            ).fetchall()
            return revision, entries, disabled, banks, grouped

        revision, entries, disabled, banks, grouped = self._read(read, snapshot=True)
        by_bank: dict[str, dict[str, int]] = {}
        served: dict[str, dict[str, int]] = {}
        for bank, algorithm, count, active in grouped:
            by_bank.setdefault(bank, {})[algorithm] = count
            if active:
                served.setdefault(bank, {})[algorithm] = active
        return StoreStats(revision=revision, banks=banks, entries=entries, disabled=disabled,
                          by_bank_algorithm=by_bank, served_by_bank_algorithm=served)

    # ---- single writer -----------------------------------------------------------------------

    def writer_lock(self, name: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        """The advisory lock `name`, for every process using this database (postgres_lock)."""
        return advisory_writer_lock(self._connect(), self._location, name, wait=wait)
