"""Large imports into the SQLite store: one transaction, indexes rebuilt once at the end."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from hashsvc.store.model import AddResult, EntryRow

# The store's revision, as an SQL expression: every changed row is stamped with it.
REVISION_SQL = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'revision')"
REBUILD_MIN = 100_000  # rows: below, rebuilding indexes is not worth a thought
_INDEX_BYTES_PER_ROW = 96  # cache for a large import: the UNIQUE index, ~60 B a row, and room
_MAX_CACHE_BYTES = 2 << 30


class SqliteBulkAdder:
    """Adds entries inside an open transaction (see `Store.bulk_add`), counting duplicates.

    Random hashes make every insert a random B-tree update of each index on `entries`. When the
    rows to come outnumber those already there (`expected` >= `REBUILD_MIN` and the store's
    size), the indexes are dropped and rebuilt by `finish`: one sort each, measured at about a
    quarter of the CPU that updating them row by row costs (1M rows: 2.6 s to insert without
    the unique index plus 2.0 s to build it, against 8.1 s with it). Without the unique index
    the rows go in unchecked, so `finish` builds it first, and if the bank now holds a hash
    twice, deletes this import's later copies (counting them as duplicates, as INSERT OR IGNORE
    would have) and builds it again. Same transaction, so a failed import rolls it all back.
    """

    def __init__(self, db: sqlite3.Connection, bank_id: int, *, expected: int = 0) -> None:
        self._db = db
        revision = int(db.execute(f"SELECT {REVISION_SQL}").fetchone()[0])
        # Constants are part of the statement, not bound per row: ~10% of the insert's CPU.
        self._sql = (
            "INSERT OR IGNORE INTO entries (bank_id, algorithm, hash, external_id, metadata,"
            f" added_at, changed_rev, variant) VALUES ({int(bank_id)}, ?, ?, ?, ?,"
            f" {time.time()!r}, {revision}, ?)"
        )
        self._bank_id = bank_id
        self._rebuild: dict[str, str] = {}
        self._last_old_id = 0
        self._cache_size: int | None = None
        if expected >= REBUILD_MIN:
            existing = db.execute("SELECT COALESCE(MAX(id), 0) FROM entries").fetchone()[0]
            if expected >= existing:  # MAX(id) >= COUNT(*), and O(log n)
                self._last_old_id = int(existing)
                self._rebuild = self._drop_indexes()
            self._grow_cache((existing + expected) * _INDEX_BYTES_PER_ROW)
        self.result = AddResult()

    def _grow_cache(self, wanted: int) -> None:
        """Keep the UNIQUE index's pages in the cache for the whole import.

        Inserts touch that index at random; once it outgrows the cache, SQLite spills dirty pages
        to the WAL and rewrites them there again and again (a 10M-row import wrote 16 GB and
        ran for minutes). The cache only grows as pages are used; `close` shrinks it back.
        """
        current = int(self._db.execute("PRAGMA cache_size").fetchone()[0])
        wanted_kib = min(wanted, _MAX_CACHE_BYTES) // 1024
        if current < 0 and wanted_kib > -current:
            self._cache_size = current
            self._db.execute(f"PRAGMA cache_size = -{wanted_kib}")

    def _drop_indexes(self) -> dict[str, str]:
        """Drop the indexes of `entries`; returns the statements that recreate them, by name."""
        rows = self._db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'entries'"
            " AND sql IS NOT NULL"  # NULL: a constraint's own index (none since schema 4)
        ).fetchall()
        for name, _ in rows:
            self._db.execute(f'DROP INDEX "{name}"')
        return dict(rows)

    def add(self, entries: Iterable[EntryRow]) -> AddResult:
        # An entry is already the statement's parameters, in order, once its metadata is JSON:
        # most lists have none, and their entries are bound as they are.
        rows: list[tuple[Any, ...]] = [
            e if e[3] is None else
            (e[0], e[1], e[2], json.dumps(e[3], sort_keys=True) if e[3] else None, e[4])
            for e in entries
        ]
        before = self._db.total_changes
        self._db.executemany(self._sql, rows)
        added = self._db.total_changes - before
        batch = AddResult(added=added, duplicates=len(rows) - added)
        self.result += batch
        return batch

    def finish(self) -> None:
        """Recreate what the constructor dropped; called by `Store.bulk_add` before COMMIT."""
        unique = self._rebuild.pop("entries_unique", None)
        if unique is not None:
            try:
                self._db.execute(unique)
            except sqlite3.IntegrityError:  # a hash twice in the bank: keep its first row
                removed = self._db.execute(
                    "DELETE FROM entries WHERE bank_id = ? AND id > ? AND id NOT IN"
                    " (SELECT MIN(id) FROM entries WHERE bank_id = ? GROUP BY algorithm, hash)",
                    (self._bank_id, self._last_old_id, self._bank_id)).rowcount
                self.result.added -= removed
                self.result.duplicates += removed
                self._db.execute(unique)
        for sql in self._rebuild.values():
            self._db.execute(sql)
        self._rebuild = {}

    def close(self) -> None:
        """Give back the cache grown for this import (after COMMIT or ROLLBACK alike)."""
        if self._cache_size is not None:
            self._db.execute(f"PRAGMA cache_size = {self._cache_size}")
            self._cache_size = None
