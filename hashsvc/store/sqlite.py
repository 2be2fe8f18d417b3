"""The source of truth: banks of known hashes, in SQLite (WAL mode).

Why SQLite: the embedded default must run with no server, survive a SIGKILL at any instant, and
import millions of rows quickly. Every write below is one transaction, so a failed or killed import
changes nothing. A `revision` counter, bumped by every write, lets the snapshot builder know whether
anything changed since the snapshot it last published.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hashsvc.errors import AlreadyExistsError, HashsvcError, NotFoundError
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
from hashsvc.store.sqlite_bulk import REVISION_SQL, SqliteBulkAdder

SCHEMA_VERSION = 5
_FRESH_SCHEMA = 4  # what _SCHEMA creates; later steps come from _upgrade
_ENTRIES_V4 = """
CREATE TABLE IF NOT EXISTS entries (
    id              INTEGER PRIMARY KEY,
    bank_id         INTEGER NOT NULL REFERENCES banks (id) ON DELETE CASCADE,
    algorithm       TEXT NOT NULL,
    hash            BLOB NOT NULL,
    external_id     TEXT,
    metadata        TEXT,
    added_at        REAL NOT NULL,
    disabled        INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    changed_rev     INTEGER NOT NULL DEFAULT 0,
    variant         TEXT NOT NULL DEFAULT ''
);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS banks (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL CHECK (kind IN ('match', 'allowlist')),
    enabled     INTEGER NOT NULL DEFAULT 1,
    tags        TEXT NOT NULL DEFAULT '[]',
    thresholds  TEXT NOT NULL DEFAULT '{}',
    strategies  TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
""" + _ENTRIES_V4 + """
CREATE INDEX IF NOT EXISTS entries_by_external_id ON entries (bank_id, external_id);
CREATE TABLE IF NOT EXISTS removed_entries (entry_id INTEGER PRIMARY KEY, rev INTEGER NOT NULL);
"""
# A hash is in a bank once. A named index rather than a table constraint (schema 4), so that a
# large import can drop it and build it once at the end (see BulkAdder).
_UNIQUE = "CREATE UNIQUE INDEX IF NOT EXISTS entries_unique ON entries (bank_id, algorithm, hash);"
_ENTRY_COLUMNS = ("id, bank_id, algorithm, hash, external_id, metadata, added_at, disabled,"
                  " disabled_reason, changed_rev, variant")
_INDEXES = _UNIQUE + """
CREATE INDEX IF NOT EXISTS entries_by_changed_rev ON entries (changed_rev);
CREATE INDEX IF NOT EXISTS removed_entries_by_rev ON removed_entries (rev);
"""



class SqliteStore:
    """Banks and entries in one SQLite file. Thread-safe.

    Writes go through one connection behind a lock; reads use a second connection with its own
    lock, so that in WAL mode a long write (a streamed import) does not stall readers.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Hash lists are for this user only. SQLite gives the -wal and -shm files the mode of
        # the database file, so creating it 0600 here keeps all three private.
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._lock = threading.RLock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode = WAL")
        self._migrate()
        self._read_lock = threading.RLock()
        self._reader = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=30.0)
        db.execute("PRAGMA synchronous = NORMAL")  # WAL stays atomic; durable at checkpoints
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA cache_size = -131072")  # 128 MiB: index pages of big imports stay hot
        return db

    def _migrate(self) -> None:
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value)"
                    " VALUES ('schema', ?), ('revision', '0')",
                    (str(_FRESH_SCHEMA),),
                )
                self._upgrade(_FRESH_SCHEMA)
            elif int(row[0]) > SCHEMA_VERSION:
                raise HashsvcError(
                    f"{self.path}: store schema {row[0]} is newer than this hashsvc "
                    f"understands ({SCHEMA_VERSION}); upgrade hashsvc"
                )
            else:
                self._upgrade(int(row[0]))
            self._db.executescript(_INDEXES)

    def _upgrade(self, schema: int) -> None:
        """Bring an older store up to `SCHEMA_VERSION`, one transaction per step."""
        steps = {
            # v2 stamps each entry change with the revision that made it
            1: "ALTER TABLE entries ADD COLUMN changed_rev INTEGER NOT NULL DEFAULT 0;",
            # v3: per-bank matching strategies, and entries that are a strategy's extra hash
            2: "ALTER TABLE banks ADD COLUMN strategies TEXT NOT NULL DEFAULT '{}';"
               " ALTER TABLE entries ADD COLUMN variant TEXT NOT NULL DEFAULT '';",
            # v4: uniqueness as a named index (a constraint's index cannot be dropped): the
            # table is rebuilt, the SQLite way, with the same ids
            3: _ENTRIES_V4.replace("IF NOT EXISTS entries", "entries_v4")
               + f" INSERT INTO entries_v4 ({_ENTRY_COLUMNS}) SELECT {_ENTRY_COLUMNS} FROM entries;"
               " DROP TABLE entries; ALTER TABLE entries_v4 RENAME TO entries;"
               " CREATE INDEX entries_by_external_id ON entries (bank_id, external_id);"
               f" {_UNIQUE}",
            # v5: banks bound to exchanges, and where each synced entry came from
            4: exchange_sql.SQLITE_SCHEMA,
        }
        for version in range(schema, SCHEMA_VERSION):
            self._db.executescript(
                f"BEGIN; {steps[version]} UPDATE meta SET value = '{version + 1}'"
                " WHERE key = 'schema'; COMMIT;"
            )

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

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that bumps the revision; rolled back on any exception.

        The new revision is set first, so that entry changes made inside the transaction can
        stamp themselves with it (`REVISION_SQL`): that is what lets servers apply changes made
        since their snapshot without a rebuild (see `changes_since`).
        """
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

    def revision(self) -> int:
        with self._read_lock:
            row = self._reader.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def wait_for_change(self, timeout: float) -> bool:
        """SQLite has no notifications to wait for: the timeout passes, and the caller reads
        the revision (a local file, so that read is cheap)."""
        time.sleep(timeout)
        return False

    # ---- banks -------------------------------------------------------------------------------

    def create_bank(
        self,
        name: str,
        *,
        description: str = "",
        kind: str = "match",
        tags: Iterable[str] = (),
        thresholds: dict[str, int] | None = None,
        enabled: bool = True,
        strategies: MatchStrategies | None = None,
    ) -> Bank:
        validate_name(name)
        _validate_description(description)
        tag_list = check_tags(tags)
        clean_thresholds = validate_thresholds(thresholds or {})
        now = time.time()
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO banks (name, description, kind, enabled, tags, thresholds,"
                    " strategies, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, description, _validate_kind(kind), int(enabled),
                     json.dumps(tag_list), json.dumps(clean_thresholds),
                     (strategies or MatchStrategies()).to_json(), now, now),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"bank {quote(name)} already exists") from None
        return self.get_bank(name)

    def get_bank(self, name: str) -> Bank:
        banks = self._query_banks("WHERE b.name = ?", (name,))
        if not banks:
            raise NotFoundError(f"no bank named {quote(name)}")
        return banks[0]

    def list_banks(self) -> list[Bank]:
        return self._query_banks("", ())

    def _query_banks(self, where: str, args: tuple[Any, ...]) -> list[Bank]:
        sql = (
            "SELECT b.id, b.name, b.description, b.kind, b.enabled, b.tags, b.thresholds,"
            " b.created_at, b.updated_at,"
            " (SELECT COUNT(*) FROM entries e WHERE e.bank_id = b.id), b.strategies"
            f" FROM banks b {where} ORDER BY b.name"
        )
        with self._read_lock:
            rows = self._reader.execute(sql, args).fetchall()
        return [bank_from_row(r) for r in rows]

    def update_bank(
        self,
        name: str,
        *,
        new_name: str | None = None,
        description: str | None = None,
        kind: str | None = None,
        enabled: bool | None = None,
        tags: Iterable[str] | None = None,
        thresholds: dict[str, int] | None = None,
        strategies: MatchStrategies | None = None,
    ) -> Bank:
        """Change only the fields given; `thresholds` replaces the whole override map.

        Enabling or disabling a bank is live: its entries are stamped as changed, so running
        servers add them to (or tombstone them in) their delta within a reload interval, as
        for an entry change, whether or not a snapshot was published meanwhile. That is what
        makes a disabled bank a staging area: import, review, enable. Changed strategies,
        thresholds, kind and tags apply to scans from the next snapshot; extra hashes of known
        images already added are not recomputed (re-add the images to get them)."""
        bank = self.get_bank(name)
        changes = bank_changes(name, new_name=new_name, description=description, kind=kind,
                               enabled=enabled, tags=tags, thresholds=thresholds,
                               strategies=strategies)
        if "enabled" in changes:
            changes["enabled"] = int(changes["enabled"])
        if not changes:
            return bank
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{column} = ?" for column in changes)
        try:
            with self._write() as db:
                db.execute(
                    f"UPDATE banks SET {assignments} WHERE id = ?", (*changes.values(), bank.id)
                )
                if "enabled" in changes and bool(changes["enabled"]) != bank.enabled:
                    db.execute(f"UPDATE entries SET changed_rev = {REVISION_SQL} WHERE bank_id = ?",
                               (bank.id,))
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(f"bank {quote(str(new_name))} already exists") from None
        return self.get_bank(changes.get("name", name))

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

    def add_entries(self, bank_name: str, entries: Iterable[NewEntry]) -> AddResult:
        with self.bulk_add(bank_name) as adder:
            adder.add(entries)
        return adder.result

    def get_entry(self, entry_id: int) -> Entry:
        entries = self._query_entries("WHERE e.id = ?", (entry_id,))
        if not entries:
            raise NotFoundError(f"no entry with id {entry_id}")
        return entries[0]

    def find_entries(self, bank_name: str, selector: EntrySelector) -> list[Entry]:
        bank = self.get_bank(bank_name)
        found: list[Entry] = []
        for where, args in _selector_sql(bank.id, selector):
            found.extend(self._query_entries(where, args))
        return sorted({e.id: e for e in found}.values(), key=lambda e: e.id)

    def list_entries(self, query: EntryQuery) -> EntryPage:
        for bank in query.checked().banks:
            self.get_bank(bank)  # an unknown bank is an error, not an empty page
        where, args = query_sql(query, "?")
        return page_of(query, self._query_entries(where, args, order=False))

    def _query_entries(
        self, where: str, args: tuple[Any, ...], *, order: bool = True
    ) -> list[Entry]:
        sql = (
            "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata, e.added_at,"
            " e.disabled, e.disabled_reason, e.variant"
            " FROM entries e JOIN banks b ON b.id = e.bank_id"
            f" {where}{' ORDER BY e.id' if order else ''}"
        )
        with self._read_lock:
            rows = self._reader.execute(sql, args).fetchall()
        return [
            Entry(id=r[0], bank=r[1], algorithm=r[2], hash=r[3], external_id=r[4],
                  metadata=json.loads(r[5]) if r[5] else None, added_at=r[6],
                  disabled=bool(r[7]), disabled_reason=r[8], variant=r[9])
            for r in rows
        ]

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
                    f"UPDATE entries SET disabled = ?, disabled_reason = ?,"
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
            finally:
                self._reader.execute("COMMIT")
        return StoreChanges(
            revision=current,
            changed=frozenset([r[0] for r in rows] + removed),
            active=[r[:7] for r in rows if r[7]],
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


    # ---- exchanges (exchange_sql.py) ---------------------------------------------------------

    def bind_exchange(self, bank_name: str, exchange: str, config: dict[str, Any],
                      credentials: Credentials | None = None) -> ExchangeBinding:
        bank = self.get_bank(bank_name)
        with self._write() as db:
            exchange_sql.bind(_runner(db), bank.id, exchange, config, credentials)
        return self.exchange_bindings(bank_name)[0]

    def exchange_bindings(self, bank_name: str | None = None) -> list[ExchangeBinding]:
        with self._read_lock:
            return exchange_sql.bindings(_runner(self._reader), bank_name)

    def apply_exchange_page(self, bank_name: str, page: ExchangePage,
                            expected_checkpoint: str | None) -> PageResult:
        bank = self.get_bank(bank_name)
        with self._write() as db:
            revision = int(db.execute(f"SELECT {REVISION_SQL}").fetchone()[0])
            return exchange_sql.apply_page(_runner(db), bank.id, bank.name, revision, page,
                                           expected_checkpoint)

    def entry_provenance(self, entry_id: int) -> list[Provenance]:
        with self._read_lock:
            return exchange_sql.provenance(_runner(self._reader), entry_id)


def _runner(db: sqlite3.Connection) -> exchange_sql.Run:
    def run(sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        cursor = db.execute(sql, args)
        return cursor.fetchall(), cursor.rowcount
    return run


_CHUNK = 500  # selector items per statement: far below SQLite's bound-variable limit


def _selector_sql(
    bank_id: int, selector: EntrySelector, alias: str = "e.", mark: str = "?"
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """WHERE clauses covering `selector`, a bounded number of items each; `alias` is "" where
    SQLite allows no table alias; `mark` is the driver's placeholder (PostgreSQL's is %s)."""
    for where, args in _selector_clauses(bank_id, selector, alias):
        yield (where if mark == "?" else where.replace("?", mark)), args


def _selector_clauses(
    bank_id: int, selector: EntrySelector, alias: str
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    if selector.is_empty():
        raise HashsvcError("select entries by id, external id or hash")
    prefix = f"WHERE {alias}bank_id = ? AND "
    for start in range(0, len(selector.ids), _CHUNK):
        chunk = list(selector.ids[start : start + _CHUNK])
        yield f"{prefix}{alias}id IN ({', '.join('?' * len(chunk))})", (bank_id, *chunk)
    for start in range(0, len(selector.external_ids), _CHUNK):
        names = list(selector.external_ids[start : start + _CHUNK])
        yield (f"{prefix}{alias}external_id IN ({', '.join('?' * len(names))})",
               (bank_id, *names))
    for start in range(0, len(selector.hashes), _CHUNK):
        pairs = selector.hashes[start : start + _CHUNK]
        clause = " OR ".join(f"({alias}algorithm = ? AND {alias}hash = ?)" for _ in pairs)
        yield f"{prefix}({clause})", (bank_id, *(v for pair in pairs for v in pair))
