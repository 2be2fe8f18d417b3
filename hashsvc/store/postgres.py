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

import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from hashsvc.errors import (
    AlreadyExistsError,
    NotFoundError,
    StoreUnavailableError,
)
from hashsvc.limits import LIMITS, check_tags, check_text, quote
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.store import exchange_sql
from hashsvc.store.base import redact
from hashsvc.store.exchange_model import (
    Credentials,
    ExchangeBinding,
    ExchangePage,
    PageResult,
    Provenance,
)
from hashsvc.store.listing import EntryPage, EntryQuery, page_of, query_sql
from hashsvc.store.model import (
    AddResult,
    Bank,
    Entry,
    EntrySelector,
    NewEntry,
    StoreChanges,
    StoreStats,
    _validate_description,
    _validate_kind,
    bank_changes,
    bank_from_row,
    validate_name,
    validate_thresholds,
)
from hashsvc.store.postgres_bulk import PostgresBulkAdder
from hashsvc.store.postgres_lock import advisory_writer_lock
from hashsvc.store.postgres_notify import CHANNEL, ChangeListener
from hashsvc.store.postgres_schema import migrate
from hashsvc.store.sqlite import _selector_sql

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


class PostgresStore:
    """Banks and entries in a PostgreSQL database, one transaction per write. Thread-safe."""

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

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailableError(
                f"PostgreSQL store {self._location}: no connection within "
                f"{self._pool.timeout:g} s (server down or unreachable?)") from None
        except pg_errors.IntegrityError:
            raise  # the caller's to interpret (a bank name already taken)
        except psycopg.Error as err:  # down, restarted, refused: one line, never a traceback
            raise StoreUnavailableError(
                f"PostgreSQL store {self._location}: {_first_line(err, self._secret)}") from None

    @contextmanager
    def _write(self) -> Iterator[tuple[psycopg.Connection[Any], int]]:
        """One write transaction, with the revision it bumped; rolled back on any exception."""
        with self._conn() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'revision'"
                " RETURNING value::bigint").fetchone()
            assert row is not None
            # Delivered at commit, only if it commits: a listener's wake-up (postgres_notify.py).
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row[0])))
            yield conn, int(row[0])

    @contextmanager
    def _snapshot_read(self) -> Iterator[psycopg.Connection[Any]]:
        """One consistent read-only view for several statements."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(sql.encode(), args).fetchall()

    def revision(self) -> int:
        return int(self._rows("SELECT value FROM meta WHERE key = 'revision'")[0][0])

    def wait_for_change(self, timeout: float) -> bool:
        return self._listener.wait(timeout)

    # ---- banks -------------------------------------------------------------------------------

    def create_bank(
        self, name: str, *, description: str = "", kind: str = "match",
        tags: Iterable[str] = (), thresholds: dict[str, int] | None = None,
        enabled: bool = True, strategies: MatchStrategies | None = None,
    ) -> Bank:
        validate_name(name)
        _validate_description(description)
        tag_list = check_tags(tags)
        clean_thresholds = validate_thresholds(thresholds or {})
        now = time.time()
        try:
            with self._write() as (conn, _):
                conn.execute(
                    "INSERT INTO banks (name, description, kind, enabled, tags, thresholds,"
                    " strategies, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (name, description, _validate_kind(kind), enabled, json.dumps(tag_list),
                     json.dumps(clean_thresholds), (strategies or MatchStrategies()).to_json(),
                     now, now))
        except pg_errors.UniqueViolation:
            raise AlreadyExistsError(f"bank {quote(name)} already exists") from None
        return self.get_bank(name)

    def get_bank(self, name: str) -> Bank:
        banks = self._query_banks("WHERE b.name = %s", (name,))
        if not banks:
            raise NotFoundError(f"no bank named {quote(name)}")
        return banks[0]

    def list_banks(self) -> list[Bank]:
        return self._query_banks("", ())

    def _query_banks(self, where: str, args: tuple[Any, ...]) -> list[Bank]:
        rows = self._rows(
            "SELECT b.id, b.name, b.description, b.kind, b.enabled, b.tags, b.thresholds,"
            " b.created_at, b.updated_at,"
            " (SELECT COUNT(*) FROM entries e WHERE e.bank_id = b.id), b.strategies"
            f" FROM banks b {where} ORDER BY b.name COLLATE \"C\"", args)
        return [bank_from_row(r) for r in rows]

    def update_bank(
        self, name: str, *, new_name: str | None = None, description: str | None = None,
        kind: str | None = None, enabled: bool | None = None, tags: Iterable[str] | None = None,
        thresholds: dict[str, int] | None = None, strategies: MatchStrategies | None = None,
    ) -> Bank:
        """As `SqliteStore.update_bank`: enabling or disabling a bank stamps its entries as
        changed, so every replica's delta adds or tombstones them without a publish."""
        bank = self.get_bank(name)
        changes = bank_changes(name, new_name=new_name, description=description, kind=kind,
                               enabled=enabled, tags=tags, thresholds=thresholds,
                               strategies=strategies)
        if not changes:
            return bank
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{column} = %s" for column in changes)
        try:
            with self._write() as (conn, revision):
                conn.execute(f"UPDATE banks SET {assignments} WHERE id = %s".encode(),
                             (*changes.values(), bank.id))
                if "enabled" in changes and changes["enabled"] != bank.enabled:
                    conn.execute("UPDATE entries SET changed_rev = %s WHERE bank_id = %s",
                                 (revision, bank.id))
        except pg_errors.UniqueViolation:
            raise AlreadyExistsError(f"bank {quote(str(new_name))} already exists") from None
        return self.get_bank(changes.get("name", name))

    def delete_bank(self, name: str) -> int:
        bank = self.get_bank(name)
        with self._write() as (conn, revision):
            conn.execute("INSERT INTO removed_entries (entry_id, rev) SELECT id, %s FROM entries"
                         " WHERE bank_id = %s ON CONFLICT (entry_id) DO UPDATE SET rev = %s",
                         (revision, bank.id, revision))
            conn.execute("DELETE FROM entries WHERE bank_id = %s", (bank.id,))
            conn.execute("DELETE FROM banks WHERE id = %s", (bank.id,))
        return bank.entry_count

    # ---- entries -----------------------------------------------------------------------------

    @contextmanager
    def bulk_add(self, bank_name: str, *, expected: int = 0) -> Iterator[PostgresBulkAdder]:
        """Add many entries in one transaction (COPY, see `PostgresBulkAdder`): all of them
        land, or (on any error) none do. `expected` (an estimate of the rows to come) lets a
        large import into a small store rebuild the indexes once (see `PostgresBulkAdder`)."""
        bank = self.get_bank(bank_name)
        with self._write() as (conn, revision):
            # Entries have no foreign key (its per-row check cost more than the insert): the
            # bank is checked here instead, under the revision lock every writer takes.
            if conn.execute("SELECT 1 FROM banks WHERE id = %s", (bank.id,)).fetchone() is None:
                raise NotFoundError(f"no bank named {quote(bank_name)}")
            adder = PostgresBulkAdder(conn, bank.id, revision, expected=expected)
            yield adder
            adder.finish()

    def add_entries(self, bank_name: str, entries: Iterable[NewEntry]) -> AddResult:
        with self.bulk_add(bank_name) as adder:
            adder.add(entries)
        return adder.result

    def get_entry(self, entry_id: int) -> Entry:
        entries = self._query_entries("WHERE e.id = %s", (entry_id,))
        if not entries:
            raise NotFoundError(f"no entry with id {entry_id}")
        return entries[0]

    def find_entries(self, bank_name: str, selector: EntrySelector) -> list[Entry]:
        bank = self.get_bank(bank_name)
        found: list[Entry] = []
        for where, args in _selector_sql(bank.id, selector, mark="%s"):
            found.extend(self._query_entries(where, args))
        return sorted({e.id: e for e in found}.values(), key=lambda e: e.id)

    def list_entries(self, query: EntryQuery) -> EntryPage:
        for bank in query.checked().banks:
            self.get_bank(bank)  # an unknown bank is an error, not an empty page
        where, args = query_sql(query, "%s")
        return page_of(query, self._query_entries(where, args, order=False))

    def _query_entries(
        self, where: str, args: tuple[Any, ...], *, order: bool = True
    ) -> list[Entry]:
        rows = self._rows(
            "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata, e.added_at,"
            " e.disabled, e.disabled_reason, e.variant"
            f" FROM entries e JOIN banks b ON b.id = e.bank_id {where}"
            f"{' ORDER BY e.id' if order else ''}", args)
        return [
            Entry(id=r[0], bank=r[1], algorithm=r[2], hash=bytes(r[3]), external_id=r[4],
                  metadata=json.loads(r[5]) if r[5] else None, added_at=r[6],
                  disabled=r[7], disabled_reason=r[8], variant=r[9])
            for r in rows
        ]

    def set_disabled(
        self, bank_name: str, selector: EntrySelector, disabled: bool, reason: str | None = None
    ) -> int:
        if reason is not None:
            check_text(reason, "reason", LIMITS.reason_chars)
        bank = self.get_bank(bank_name)
        changed = 0
        with self._write() as (conn, revision):
            for where, args in _selector_sql(bank.id, selector, alias="", mark="%s"):
                changed += conn.execute(
                    f"UPDATE entries SET disabled = %s, disabled_reason = %s, changed_rev = %s"
                    f" {where}".encode(),
                    (disabled, reason if disabled else None, revision, *args)).rowcount
        return changed

    def remove_entries(self, bank_name: str, selector: EntrySelector) -> int:
        bank = self.get_bank(bank_name)
        removed = 0
        with self._write() as (conn, revision):
            for where, args in _selector_sql(bank.id, selector, alias="", mark="%s"):
                conn.execute(f"INSERT INTO removed_entries (entry_id, rev) SELECT id, %s"
                             f" FROM entries {where} ON CONFLICT (entry_id)"
                             f" DO UPDATE SET rev = EXCLUDED.rev".encode(), (revision, *args))
                removed += conn.execute(f"DELETE FROM entries {where}".encode(), args).rowcount
        return removed

    def iter_active_entries(self, batch: int = 100_000) -> Iterator[list[tuple[Any, ...]]]:
        """As `SqliteStore.iter_active_entries`: one consistent view, streamed through a
        server-side cursor so that a 10M-entry store is never held in memory at once."""
        with self._snapshot_read() as conn, conn.cursor(name="active_entries") as cursor:
            cursor.execute(
                "SELECT e.id, e.bank_id, e.algorithm, e.hash, e.external_id, e.metadata,"
                " e.variant FROM entries e JOIN banks b ON b.id = e.bank_id"
                " WHERE NOT e.disabled AND b.enabled ORDER BY e.id")
            while rows := cursor.fetchmany(batch):
                yield [(r[0], r[1], r[2], bytes(r[3]), *r[4:]) for r in rows]

    def changes_since(self, revision: int) -> StoreChanges:
        """As `SqliteStore.changes_since`, in one REPEATABLE READ transaction."""
        with self._snapshot_read() as conn:
            current = int(conn.execute(
                "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])  # type: ignore[index]
            rows = conn.execute(
                "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata,"
                " e.variant, NOT e.disabled AND b.enabled"
                " FROM entries e JOIN banks b ON b.id = e.bank_id WHERE e.changed_rev > %s",
                (revision,)).fetchall()
            removed = [r[0] for r in conn.execute(
                "SELECT entry_id FROM removed_entries WHERE rev > %s", (revision,))]
        return StoreChanges(
            revision=current,
            changed=frozenset([r[0] for r in rows] + removed),
            active=[(r[0], r[1], r[2], bytes(r[3]), *r[4:7]) for r in rows if r[7]],
        )

    def stats(self) -> StoreStats:
        with self._snapshot_read() as conn:
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
        by_bank: dict[str, dict[str, int]] = {}
        served: dict[str, dict[str, int]] = {}
        for bank, algorithm, count, active in grouped:
            by_bank.setdefault(bank, {})[algorithm] = count
            if active:
                served.setdefault(bank, {})[algorithm] = active
        return StoreStats(revision=revision, banks=banks, entries=entries, disabled=disabled,
                          by_bank_algorithm=by_bank, served_by_bank_algorithm=served)

    # ---- exchanges (exchange_sql.py) ---------------------------------------------------------

    def bind_exchange(self, bank_name: str, exchange: str, config: dict[str, Any],
                      credentials: Credentials | None = None) -> ExchangeBinding:
        bank = self.get_bank(bank_name)
        with self._write() as (conn, _):
            exchange_sql.bind(_runner(conn), bank.id, exchange, config, credentials)
        return self.exchange_bindings(bank_name)[0]

    def exchange_bindings(self, bank_name: str | None = None) -> list[ExchangeBinding]:
        with self._conn() as conn:
            return exchange_sql.bindings(_runner(conn), bank_name)

    def apply_exchange_page(self, bank_name: str, page: ExchangePage,
                            expected_checkpoint: str | None) -> PageResult:
        bank = self.get_bank(bank_name)
        with self._write() as (conn, revision):
            return exchange_sql.apply_page(_runner(conn), bank.id, bank.name, revision, page,
                                           expected_checkpoint)

    def entry_provenance(self, entry_id: int) -> list[Provenance]:
        with self._conn() as conn:
            return exchange_sql.provenance(_runner(conn), entry_id)

    # ---- single writer -----------------------------------------------------------------------

    def writer_lock(self, name: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        """The advisory lock `name`, for every process using this database (postgres_lock)."""
        return advisory_writer_lock(self._connect(), self._location, name, wait=wait)


def _runner(conn: psycopg.Connection[Any]) -> exchange_sql.Run:
    def run(sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        cursor = conn.execute(sql.replace("?", "%s").encode(), args)
        return (cursor.fetchall() if cursor.description is not None else []), cursor.rowcount
    return run
