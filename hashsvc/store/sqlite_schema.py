"""The SQLite store's schema, and its upgrade from older versions in place.

Why apart from `sqlite`: the tables and their history change on their own schedule (one step per
schema version, never edited once released), while the store's queries change with features.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hashsvc.errors import HashsvcError
from hashsvc.store import console_sessions, exchange_sql, feedback_sql, flood

SCHEMA_VERSION = 9
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


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema, or bring an older store up to `SCHEMA_VERSION`; refuse a newer one."""
    db.executescript(_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value)"
            " VALUES ('schema', ?), ('revision', '0')",
            (str(_FRESH_SCHEMA),),
        )
        _upgrade(db, _FRESH_SCHEMA)
    elif int(row[0]) > SCHEMA_VERSION:
        raise HashsvcError(
            f"{path}: store schema {row[0]} is newer than this hashsvc "
            f"understands ({SCHEMA_VERSION}); upgrade hashsvc"
        )
    else:
        _upgrade(db, int(row[0]))
    db.executescript(_INDEXES)


def check_version(db: sqlite3.Connection, path: Path) -> None:
    """Refuse, for a reader that may not upgrade it, a store of another schema version."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None or int(row[0]) != SCHEMA_VERSION:
        raise HashsvcError(
            f"{path}: store schema {row[0] if row else 'unknown'}, this hashsvc reads only "
            f"{SCHEMA_VERSION}; let the admin process (which upgrades it) start first")


def _upgrade(db: sqlite3.Connection, schema: int) -> None:
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
        # v6: how each exchange-backed bank's syncs went (metrics, alerts, `exchange status`)
        5: exchange_sql.SQLITE_HEALTH_SCHEMA,
        # v7: analysts' verdicts on matches, and the outbox that sends them upstream
        6: feedback_sql.SQLITE_SCHEMA,
        # v8: the flood guard's per-bank thresholds and the analysts' releases (flood.py)
        7: flood.SQLITE_SCHEMA,
        # v9: the web console's live sessions, so signing out ends one everywhere
        8: console_sessions.SQLITE_SCHEMA,
    }
    for version in range(schema, SCHEMA_VERSION):
        db.executescript(
            f"BEGIN; {steps[version]} UPDATE meta SET value = '{version + 1}'"
            " WHERE key = 'schema'; COMMIT;"
        )
