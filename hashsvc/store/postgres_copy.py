"""Moving a SQLite store into an empty PostgreSQL one, ids, revisions and tombstones included.

Why verbatim rather than re-importing: published snapshots name entries by id and record the
store revision they were built at; servers compute their live delta as "entries changed after
that revision". Copying ids, each entry's `changed_rev`, the removed-entry tombstones and the
revision itself keeps every existing snapshot valid against the new store, so a deployment can
switch its store without a rebuild and without a moment of wrong matches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from hashsvc.errors import AlreadyExistsError
from hashsvc.store.postgres import PostgresStore
from hashsvc.store.postgres_bulk import _DROP, _REBUILT, _UNIQUE
from hashsvc.store.sqlite import SqliteStore

_BATCH = 50_000
_BANK_COLUMNS = ("id, name, description, kind, enabled, tags, thresholds, strategies,"
                 " created_at, updated_at")
_ENTRY_COLUMNS = ("id, bank_id, algorithm, hash, external_id, metadata, added_at, disabled,"
                  " disabled_reason, changed_rev, variant")


@dataclass(frozen=True)
class CopyReport:
    banks: int
    entries: int
    removed: int
    revision: int


def _batches(cursor: sqlite3.Cursor) -> Iterator[list[tuple[object, ...]]]:
    while rows := cursor.fetchmany(_BATCH):
        yield rows


def copy_sqlite_to_postgres(source: SqliteStore, target: PostgresStore) -> CopyReport:
    """Copy everything in `source` into `target`, which must hold no bank, in one transaction
    on each side: a consistent read of the source, all-or-nothing on the target."""
    reader = sqlite3.connect(source.path)
    try:
        reader.execute("BEGIN")  # one read transaction: a consistent view of the source
        revision = int(reader.execute(
            "SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        with target._errors(), target._write() as (conn, _):
            if conn.execute("SELECT EXISTS (SELECT 1 FROM banks)").fetchone() != (False,):
                raise AlreadyExistsError(
                    f"{target.location} already holds banks: copy only into an empty store")
            conn.execute(b"SET LOCAL maintenance_work_mem = '1GB'")
            conn.execute(_DROP)
            counts = []
            for table, columns, booleans in (("banks", _BANK_COLUMNS, (4,)),
                                             ("entries", _ENTRY_COLUMNS, (7,)),
                                             ("removed_entries", "entry_id, rev", ())):
                copied = 0
                select = reader.execute(f"SELECT {columns} FROM {table} ORDER BY 1")
                with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN".encode()) as copy:
                    for rows in _batches(select):
                        for row in rows:
                            copy.write_row(tuple(bool(v) if i in booleans else v
                                                 for i, v in enumerate(row)))
                        copied += len(rows)
                counts.append(copied)
            for sql in (_UNIQUE, *_REBUILT):
                conn.execute(sql)
            for table in ("banks", "entries"):  # new rows get ids after the copied ones
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                             f" GREATEST((SELECT MAX(id) FROM {table}), 1))".encode())
            conn.execute("UPDATE meta SET value = %s WHERE key = 'revision'", (str(revision),))
        reader.execute("COMMIT")
    finally:
        reader.close()
    return CopyReport(banks=counts[0], entries=counts[1], removed=counts[2], revision=revision)
