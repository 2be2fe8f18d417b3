"""The source of truth: banks of known hashes, in SQLite (WAL mode).

Why SQLite: the embedded default must run with no server, survive a SIGKILL at any instant, and
import millions of rows quickly. Every write below is one transaction, so a failed or killed import
changes nothing. A `revision` counter, bumped by every write, lets the snapshot builder know whether
anything changed since the snapshot it last published.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.limits import LIMITS, check_text
from hashsvc.store import exchange_sql
from hashsvc.store.base import redact
from hashsvc.store.model import (
    EntrySelector,
    StoreChanges,
    StoreStats,
)
from hashsvc.store.selectors import _selector_sql, reason_sql
from hashsvc.store.sql_base import Dialect, SqlStoreBase, T
from hashsvc.store.sqlite_bulk import REVISION_SQL, SqliteBulkAdder
from hashsvc.store.sqlite_schema import check_version, migrate


class SqliteStore(SqlStoreBase):
    """Banks and entries in one SQLite file. Thread-safe.

    Writes go through one connection behind a lock; reads use a second connection with its own
    lock, so that in WAL mode a long write (a streamed import) does not stall readers.
    """

    dialect = Dialect(mark="?", integrity_error=sqlite3.IntegrityError,
                      revision_sql=REVISION_SQL, name_order="b.name", flag=int)

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """`read_only`: for a scan replica, which reads the store and never writes it: the file
        is opened with SQLite's `mode=ro`, so no statement can change it, nothing is created
        and no schema is upgraded (the admin process does that)."""
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._read_lock = threading.RLock()
        if read_only:
            if not self.path.is_file():
                raise HashsvcError(f"no SQLite store at {self.path}: a scan replica opens the "
                                   "store read-only and creates none; start the admin first")
            self._db = self._connect()
            check_version(self._db, self.path)
            self._reader = self._connect()
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Hash lists are for this user only. SQLite gives the -wal and -shm files the mode of
        # the database file, so creating it 0600 here keeps all three private.
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode = WAL")
        with self._lock:
            migrate(self._db, self.path)
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        target = f"{self.path.absolute().as_uri()}?mode=ro" if self.read_only else self.path
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False,
                             timeout=30.0, uri=self.read_only)
        db.execute("PRAGMA synchronous = NORMAL")  # WAL stays atomic; durable at checkpoints
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA cache_size = -131072")  # 128 MiB: index pages of big imports stay hot
        return db

    @property
    def target(self) -> str:
        return str(self.path)

    @property
    def location(self) -> str:
        return redact(self.path)

    @contextmanager
    def writer_lock(self, name: str, *, wait: float = 0.0) -> Iterator[None]:
        """Nothing to take: a SQLite file serves one machine, where the publisher's own lock on
        the snapshot directory already makes publishers take turns (waiting, as they always
        have)."""
        yield

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the revision; rolled back on any exception.

        The new revision is set first, so that entry changes made inside the transaction can
        stamp themselves with it (`REVISION_SQL`): that is what lets servers apply changes made
        since their snapshot without a rebuild (see `changes_since`).
        """
        if self.read_only:
            raise HashsvcError(f"{self.path} is open read-only (a scan replica writes nothing)")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'"
                )
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _in_write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        with self._write() as db:
            return body(db)

    def _in_side_write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        if self.read_only:
            raise HashsvcError(f"{self.path} is open read-only (a scan replica writes nothing)")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def revision(self) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def wait_for_change(self, timeout: float) -> bool:
        """SQLite has no notifications to wait for: the timeout passes, and the caller reads
        the revision (a local file, so that read is cheap)."""
        time.sleep(timeout)
        return False

    # ---- banks (the rest are `SqlStoreBase`') -------------------------------------------------

    def delete_bank(self, name: str) -> int:
        """Delete a bank and all its entries; returns how many entries went with it."""
        bank = self.get_bank(name)
        with self._write() as db:
            db.execute(f"INSERT OR REPLACE INTO removed_entries (entry_id, rev)"
                       f" SELECT id, {REVISION_SQL} FROM entries WHERE bank_id = ?", (bank.id,))
            db.execute("DELETE FROM entries WHERE bank_id = ?", (bank.id,))
            db.execute("DELETE FROM banks WHERE id = ?", (bank.id,))
        return bank.entry_count

    # ---- entries -----------------------------------------------------------------------------

    @contextmanager
    def bulk_add(self, bank_name: str, *, expected: int = 0) -> Iterator[SqliteBulkAdder]:
        """Add many entries in one transaction: all of them land, or (on any error) none do.

        `expected` (an estimate of the rows to come) lets a large import into a small store
        rebuild the secondary indexes once instead of updating them row by row.
        """
        bank = self.get_bank(bank_name)
        adder: SqliteBulkAdder | None = None
        with self._lock:
            try:
                with self._write() as db:
                    adder = SqliteBulkAdder(db, bank.id, expected=expected)
                    yield adder
                    adder.finish()
            finally:
                if adder is not None:
                    adder.close()  # after COMMIT or ROLLBACK: the cache held the dirty pages

    def set_disabled(
        self, bank_name: str, selector: EntrySelector, disabled: bool, reason: str | None = None
    ) -> int:
        """Disable (e.g. a confirmed false positive) or re-enable entries; returns how many."""
        if reason is not None:
            check_text(reason, "reason", LIMITS.reason_chars)
        bank = self.get_bank(bank_name)
        changed = 0
        with self._write() as db:
            for where, args in _selector_sql(bank.id, selector, alias=""):
                changed += db.execute(
                    f"UPDATE entries SET disabled = ?, disabled_reason = {reason_sql(disabled)},"
                    f" changed_rev = {REVISION_SQL} {where}",
                    (int(disabled), reason if disabled else None, *args),
                ).rowcount
        return changed

    def remove_entries(self, bank_name: str, selector: EntrySelector) -> int:
        bank = self.get_bank(bank_name)
        removed = 0
        with self._write() as db:
            for where, args in _selector_sql(bank.id, selector, alias=""):
                db.execute(f"INSERT OR REPLACE INTO removed_entries (entry_id, rev)"
                           f" SELECT id, {REVISION_SQL} FROM entries {where}", args)
                removed += db.execute(f"DELETE FROM entries {where}", args).rowcount
            # SQLite may give a removed entry's id to a later one: no provenance may point at
            # it then (entry_provenance has no foreign key, see exchange_sql)
            db.execute(f"DELETE FROM entry_provenance WHERE entry_id IN (SELECT entry_id"
                       f" FROM removed_entries WHERE rev = {REVISION_SQL})")
        return removed

    def iter_active_entries(self, batch: int = 100_000) -> Iterator[list[tuple[Any, ...]]]:
        """Every entry a snapshot should contain, in batches:
        (id, bank_id, algorithm, hash, external_id, metadata, variant), enabled banks only.

        Runs inside one read transaction, so the batches are one consistent view of the store.
        """
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                cursor = self._reader.execute(
                    "SELECT e.id, e.bank_id, e.algorithm, e.hash, e.external_id, e.metadata,"
                    " e.variant FROM entries e JOIN banks b ON b.id = e.bank_id"
                    " WHERE e.disabled = 0 AND b.enabled = 1 ORDER BY e.id"
                )
                while rows := cursor.fetchmany(batch):
                    yield rows
            finally:
                self._reader.execute("COMMIT")

    def changes_since(self, revision: int) -> StoreChanges:
        """Entries changed after `revision` (a snapshot's), in one consistent read.

        `active` are entries to match now (added, or re-enabled, in an enabled bank); `changed`
        are the ids of every entry touched since, whose snapshot copy (if any) is now stale.
        """
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                current = int(self._reader.execute(
                    "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
                rows = self._reader.execute(
                    "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata,"
                    " e.variant, e.disabled = 0 AND b.enabled = 1"
                    " FROM entries e JOIN banks b ON b.id = e.bank_id WHERE e.changed_rev > ?",
                    (revision,),
                ).fetchall()
                removed = [r[0] for r in self._reader.execute(
                    "SELECT entry_id FROM removed_entries WHERE rev > ?", (revision,))]
                provenance = self._reader.execute(
                    exchange_sql.CHANGED_PROVENANCE_SQL, (revision,)).fetchall()
            finally:
                self._reader.execute("COMMIT")
        return StoreChanges(
            revision=current,
            changed=frozenset([r[0] for r in rows] + removed),
            active=[r[:7] for r in rows if r[7]],
            provenance=exchange_sql.provenance_texts(provenance),
        )

    def stats(self) -> StoreStats:
        with self._read_lock:
            totals = self._reader.execute(
                "SELECT COUNT(*), COALESCE(SUM(disabled), 0) FROM entries"
            ).fetchone()
            bank_count = self._reader.execute("SELECT COUNT(*) FROM banks").fetchone()[0]
            grouped = self._reader.execute(
                "SELECT b.name, e.algorithm, COUNT(*), SUM(e.disabled = 0 AND b.enabled = 1)"
                " FROM entries e JOIN banks b ON b.id = e.bank_id GROUP BY b.name, e.algorithm"
            ).fetchall()
        by_bank: dict[str, dict[str, int]] = {}
        served: dict[str, dict[str, int]] = {}
        for bank, algorithm, count, active in grouped:
            by_bank.setdefault(bank, {})[algorithm] = count
            if active:
                served.setdefault(bank, {})[algorithm] = active
        return StoreStats(revision=self.revision(), banks=bank_count, entries=totals[0],
                          disabled=totals[1], by_bank_algorithm=by_bank,
                          served_by_bank_algorithm=served)
