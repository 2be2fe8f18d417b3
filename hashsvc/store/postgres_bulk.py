"""Large imports into the PostgreSQL store: COPY into a staging table, then one INSERT.

Why COPY: row-by-row INSERTs cost a network round trip (or at least a statement) per hash;
COPY streams rows at the server's parsing speed. It cannot skip duplicates, so rows go into a
temporary table first, and `INSERT ... SELECT ... ON CONFLICT DO NOTHING` moves them into
`entries`: the rows it did not insert are the duplicates (in the bank already, or earlier in the
same import, whose first copy wins as in the SQLite store). All of it runs in the caller's
transaction (`PostgresStore.bulk_add`), so a failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from hashsvc.store.model import AddResult, EntryRow

_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS import_staging (
    seq BIGINT GENERATED ALWAYS AS IDENTITY, algorithm TEXT, hash BYTEA, external_id TEXT,
    metadata TEXT, variant TEXT
) ON COMMIT DROP
"""


class PostgresBulkAdder:
    """Adds entries inside an open transaction (see `PostgresStore.bulk_add`), counting
    duplicates. Each `add` is one COPY and one INSERT, so its result is known at once."""

    def __init__(self, conn: psycopg.Connection[Any], bank_id: int, revision: int) -> None:
        self._conn = conn
        conn.execute(_STAGING)
        self._insert = (
            b"INSERT INTO entries (bank_id, algorithm, hash, external_id, metadata, added_at,"
            b" changed_rev, variant) SELECT %s, algorithm, hash, external_id, metadata, %s, %s,"
            b" variant FROM import_staging ORDER BY seq"
            b" ON CONFLICT (bank_id, algorithm, hash) DO NOTHING"
        )
        self._params = (bank_id, time.time(), revision)
        self.result = AddResult()

    def add(self, entries: Iterable[EntryRow]) -> AddResult:
        staged = 0
        with self._conn.cursor() as cursor:
            with cursor.copy(b"COPY import_staging (algorithm, hash, external_id, metadata,"
                             b" variant) FROM STDIN") as copy:
                for e in entries:
                    meta = e[3]
                    copy.write_row(
                        e if meta is None else
                        (e[0], e[1], e[2], json.dumps(meta, sort_keys=True) if meta else None,
                         e[4]))
                    staged += 1
            if not staged:
                return AddResult()
            cursor.execute(self._insert, self._params)
            added = cursor.rowcount
            cursor.execute(b"TRUNCATE import_staging")
        batch = AddResult(added=added, duplicates=staged - added)
        self.result += batch
        return batch
