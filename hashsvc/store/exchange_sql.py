"""Exchange bindings, provenance and the applying of a page of upstream changes, in SQL both
store backends run (SQLite and PostgreSQL share this dialect: `ON CONFLICT`, `RETURNING`).

Why one implementation: the promise that matters, a page and its checkpoint in one
transaction, is kept by the backend's own write transaction (`_write`); what happens inside it
is the same on both, so it is written once. Statements use `?`; PostgreSQL's driver gets `%s`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from hashsvc.errors import NotFoundError, WriterBusyError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.limits import check_tags, quote
from hashsvc.store.exchange_model import (
    DEFAULT_ALERT_AFTER,
    SCHEDULE_KEY,
    Credentials,
    ExchangeBinding,
    ExchangePage,
    PageResult,
    Provenance,
    SyncHealth,
    UpstreamEntry,
    check_exchange_name,
    provenance_by_entry,
)

# One statement with `?` marks and its arguments -> the rows it returns (if any) and rowcount.
Run = Callable[[str, tuple[Any, ...]], tuple[list[tuple[Any, ...]], int]]

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange_bindings (
    bank_id     INTEGER PRIMARY KEY REFERENCES banks (id) ON DELETE CASCADE,
    exchange    TEXT NOT NULL,
    config      TEXT NOT NULL DEFAULT '{}',
    credentials TEXT,
    checkpoint  TEXT,
    bound_at    REAL NOT NULL,
    synced_at   REAL
);
CREATE TABLE IF NOT EXISTS entry_provenance (
    bank_id     INTEGER NOT NULL REFERENCES banks (id) ON DELETE CASCADE,
    upstream_id TEXT NOT NULL,
    entry_id    INTEGER NOT NULL,  -- no foreign key: large imports drop entries' key
    exchange    TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '[]',
    listing     TEXT,
    first_seen  REAL NOT NULL,
    last_seen   REAL NOT NULL,
    PRIMARY KEY (bank_id, upstream_id)
);
CREATE INDEX IF NOT EXISTS entry_provenance_by_entry ON entry_provenance (entry_id);
"""
# How each bank's syncs went (SyncHealth). Its own table, written outside the revision (a sync
# that finds nothing new must not look like a store change to `publish` or the servers).
SQLITE_HEALTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchange_sync_health (
    bank_id       INTEGER PRIMARY KEY REFERENCES banks (id) ON DELETE CASCADE,
    last_success  REAL,
    last_error    TEXT,
    last_error_at REAL,
    errors        INTEGER NOT NULL DEFAULT 0,
    fetched       INTEGER NOT NULL DEFAULT 0,
    added         INTEGER NOT NULL DEFAULT 0,
    updated       INTEGER NOT NULL DEFAULT 0,
    deleted       INTEGER NOT NULL DEFAULT 0,
    alert_after   REAL
);
"""


def _postgres(schema: str) -> str:
    return (schema.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
            .replace("INTEGER NOT NULL", "BIGINT NOT NULL")
            .replace("REAL", "DOUBLE PRECISION")
            .replace("upstream_id TEXT", 'upstream_id TEXT COLLATE "C"'))


POSTGRES_SCHEMA = _postgres(SQLITE_SCHEMA)
POSTGRES_HEALTH_SCHEMA = _postgres(SQLITE_HEALTH_SCHEMA)
_ERROR_CHARS = 500  # of a failed sync's error kept in the store

_BINDING_COLUMNS = ("b.name, x.exchange, x.config, x.credentials, x.checkpoint, x.bound_at,"
                    " x.synced_at")


def bind(run: Run, bank_id: int, exchange: str, config: dict[str, Any],
         credentials: Credentials | None) -> None:
    """Bind (or re-bind) a bank; a changed exchange or config starts again from no
    checkpoint, the same ones keep it (re-binding to rotate a credentials path, or to change
    how often it is synced, resumes)."""
    check_exchange_name(exchange)
    config_json = json.dumps(config, sort_keys=True)
    rows, _ = run("SELECT exchange, config FROM exchange_bindings WHERE bank_id = ?", (bank_id,))
    keep = bool(rows) and (rows[0][0], _without_schedule(json.loads(rows[0][1]))) == (
        exchange, _without_schedule(config))
    run("INSERT INTO exchange_bindings (bank_id, exchange, config, credentials, bound_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bank_id) DO UPDATE SET"
        " exchange = excluded.exchange, config = excluded.config,"
        " credentials = excluded.credentials, bound_at = excluded.bound_at"
        + ("" if keep else ", checkpoint = NULL, synced_at = NULL"),
        (bank_id, exchange, config_json, credentials.to_json() if credentials else None,
         time.time()))


def _without_schedule(config: dict[str, Any]) -> dict[str, Any]:
    """What decides where the exchange's checkpoint points: the config less its schedule."""
    return {k: v for k, v in config.items() if k != SCHEDULE_KEY}


def bindings(run: Run, bank_name: str | None) -> list[ExchangeBinding]:
    where, args = ("WHERE b.name = ?", (bank_name,)) if bank_name is not None else ("", ())
    rows, _ = run(f"SELECT {_BINDING_COLUMNS} FROM exchange_bindings x"
                  f" JOIN banks b ON b.id = x.bank_id {where} ORDER BY b.name", args)
    if bank_name is not None and not rows:
        raise NotFoundError(f"bank {quote(bank_name)} is not bound to an exchange "
                            "(`indexer exchange bind`)")
    return [ExchangeBinding(bank=r[0], exchange=r[1], config=json.loads(r[2]),
                            credentials=Credentials.from_json(r[3]), checkpoint=r[4],
                            bound_at=r[5], synced_at=r[6]) for r in rows]


def provenance(run: Run, entry_ids: Sequence[int]) -> list[Provenance]:
    """The provenance of every entry in `entry_ids`, by entry then upstream id: one query for
    a whole ListEntries page rather than one per entry."""
    if not entry_ids:
        return []
    rows, _ = run("SELECT entry_id, exchange, upstream_id, tags, first_seen, last_seen"
                  f" FROM entry_provenance WHERE entry_id IN ({', '.join('?' * len(entry_ids))})"
                  " ORDER BY entry_id, upstream_id", tuple(entry_ids))
    return [Provenance(entry_id=r[0], exchange=r[1], upstream_id=r[2],
                       tags=tuple(json.loads(r[3])), first_seen=r[4], last_seen=r[5])
            for r in rows]


# The provenance of every entry changed after a revision (`?`), for the change feed: read in
# the same transaction as the changes (`Store.changes_since`), so the two agree.
CHANGED_PROVENANCE_SQL = (
    "SELECT p.entry_id, p.exchange, p.upstream_id, p.tags, p.first_seen, p.last_seen"
    " FROM entry_provenance p JOIN entries e ON e.id = p.entry_id WHERE e.changed_rev > ?"
    " ORDER BY p.entry_id, p.upstream_id")


def provenance_texts(rows: Sequence[Sequence[Any]]) -> dict[int, str]:
    """Rows of `CHANGED_PROVENANCE_SQL` -> entry id -> its provenance as JSON."""
    return provenance_by_entry(
        Provenance(entry_id=r[0], exchange=r[1], upstream_id=r[2], tags=tuple(json.loads(r[3])),
                   first_seen=r[4], last_seen=r[5]) for r in rows)


def apply_page(run: Run, bank_id: int, bank_name: str, revision: int, page: ExchangePage,
               expected_checkpoint: str | None) -> PageResult:
    """Apply `page` and store its checkpoint, inside the caller's write transaction.

    The checkpoint is compared first: if it is no longer `expected_checkpoint`, another sync
    applied pages meanwhile, and this one is refused (the transaction rolls back) rather than
    applying the same changes twice."""
    rows, _ = run("SELECT exchange, checkpoint FROM exchange_bindings WHERE bank_id = ?",
                  (bank_id,))
    if not rows:
        raise NotFoundError(f"bank {quote(bank_name)} is not bound to an exchange")
    exchange, stored = rows[0]
    if stored != expected_checkpoint:
        raise WriterBusyError(f"bank {quote(bank_name)}: its exchange checkpoint moved while "
                              "this sync ran (another sync?); run the sync again")
    now = time.time()
    result = PageResult()
    for upstream in page.upserts:
        _upsert(run, bank_id, exchange, revision, now, page.listing, upstream, result)
    gone = list(page.deletions)
    if page.ends_listing:
        swept, _ = run("SELECT upstream_id FROM entry_provenance WHERE bank_id = ?"
                       " AND (listing IS NULL OR listing <> ?)", (bank_id, page.listing or ""))
        gone.extend(r[0] for r in swept)
    for upstream_id in gone:
        result.deleted += _delete(run, bank_id, revision, upstream_id)
    run("UPDATE exchange_bindings SET checkpoint = ?, synced_at = ? WHERE bank_id = ?",
        (page.checkpoint, now, bank_id))
    return result


def _upsert(run: Run, bank_id: int, exchange: str, revision: int, now: float,
            listing: str | None, upstream: UpstreamEntry, result: PageResult) -> None:
    algorithm = get_algorithm(upstream.algorithm)
    algorithm.format(upstream.hash)  # raises on a hash of the wrong length
    tags = check_tags(upstream.tags)
    tags_json = json.dumps(tags)
    rows, _ = run("SELECT p.entry_id, p.tags, e.algorithm, e.hash FROM entry_provenance p"
                  " JOIN entries e ON e.id = p.entry_id"
                  " WHERE p.bank_id = ? AND p.upstream_id = ?", (bank_id, upstream.upstream_id))
    if rows and (rows[0][2], bytes(rows[0][3])) == (algorithm.name, upstream.hash):
        entry_id, old_tags = rows[0][0], rows[0][1]
        if old_tags != tags_json:  # an update: new metadata, live through the delta
            run("UPDATE entries SET metadata = ?, changed_rev = ? WHERE id = ?",
                (_metadata(exchange, upstream, tags), revision, entry_id))
            result.updated += 1
        else:
            result.unchanged += 1
        run("UPDATE entry_provenance SET tags = ?, listing = ?, last_seen = ?"
            " WHERE bank_id = ? AND upstream_id = ?",
            (tags_json, listing, now, bank_id, upstream.upstream_id))
        return
    if rows:  # the same upstream id now names another hash: the old one goes
        _delete(run, bank_id, revision, upstream.upstream_id)
        result.updated += 1
    else:
        result.added += 1
    inserted, _ = run(
        "INSERT INTO entries (bank_id, algorithm, hash, external_id, metadata, added_at,"
        " disabled, changed_rev, variant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')"
        " ON CONFLICT DO NOTHING RETURNING id",
        (bank_id, algorithm.name, upstream.hash, upstream.external_id or upstream.upstream_id,
         _metadata(exchange, upstream, tags), now, False, revision))
    if inserted:
        entry_id = inserted[0][0]
    else:  # the hash was already in the bank (imported, or under another upstream id)
        existing, _ = run("SELECT id FROM entries WHERE bank_id = ? AND algorithm = ?"
                          " AND hash = ?", (bank_id, algorithm.name, upstream.hash))
        entry_id = existing[0][0]
        _provenance_changed(run, revision, entry_id)
    # ON CONFLICT: a row left by an entry removed by hand (`indexer remove`) is taken over
    run("INSERT INTO entry_provenance (bank_id, upstream_id, entry_id, exchange, tags, listing,"
        " first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (bank_id, upstream_id) DO UPDATE SET entry_id = excluded.entry_id,"
        " tags = excluded.tags, listing = excluded.listing, last_seen = excluded.last_seen",
        (bank_id, upstream.upstream_id, entry_id, exchange, tags_json, listing, now, now))


def _delete(run: Run, bank_id: int, revision: int, upstream_id: str) -> int:
    """Forget `upstream_id`; its entry goes too unless another upstream id still lists it."""
    rows, _ = run("DELETE FROM entry_provenance WHERE bank_id = ? AND upstream_id = ?"
                  " RETURNING entry_id", (bank_id, upstream_id))
    if not rows:
        return 0
    entry_id = rows[0][0]
    others, _ = run("SELECT 1 FROM entry_provenance WHERE entry_id = ? LIMIT 1", (entry_id,))
    if others:
        _provenance_changed(run, revision, entry_id)
        return 0
    run("INSERT INTO removed_entries (entry_id, rev) VALUES (?, ?)"
        " ON CONFLICT (entry_id) DO UPDATE SET rev = excluded.rev", (entry_id, revision))
    _, count = run("DELETE FROM entries WHERE id = ?", (entry_id,))
    return count


def _provenance_changed(run: Run, revision: int, entry_id: int) -> None:
    """Mark an entry changed whose provenance changed while it stayed: servers then read it
    again, with its provenance, through the delta (their matches report it)."""
    run("UPDATE entries SET changed_rev = ? WHERE id = ?", (revision, entry_id))


def _metadata(exchange: str, upstream: UpstreamEntry, tags: list[str]) -> str:
    """What a match reports of an entry's origin (its metadata travels with every match)."""
    record: dict[str, Any] = {"exchange": exchange, "upstream_id": upstream.upstream_id}
    if tags:
        record["upstream_tags"] = tags
    return json.dumps(record)



def record_sync(run: Run, bank_id: int, totals: PageResult, error: str | None) -> None:
    """Add a sync's counts (pages applied before a failure count too: they are committed)
    and stamp its success, or its error."""
    now = time.time()
    fetched = totals.added + totals.updated + totals.unchanged
    outcome = ("last_success = ?" if error is None else
               "last_error = ?, last_error_at = ?, errors = exchange_sync_health.errors + 1")
    values: tuple[Any, ...] = (now,) if error is None else (error[:_ERROR_CHARS], now)
    run("INSERT INTO exchange_sync_health (bank_id) VALUES (?) ON CONFLICT (bank_id) DO NOTHING",
        (bank_id,))
    run(f"UPDATE exchange_sync_health SET {outcome}, fetched = fetched + ?, added = added + ?,"
        " updated = updated + ?, deleted = deleted + ? WHERE bank_id = ?",
        (*values, fetched, totals.added, totals.updated, totals.deleted, bank_id))


def set_alert_after(run: Run, bank_id: int, seconds: float) -> None:
    run("INSERT INTO exchange_sync_health (bank_id, alert_after) VALUES (?, ?)"
        " ON CONFLICT (bank_id) DO UPDATE SET alert_after = excluded.alert_after",
        (bank_id, seconds))


def health(run: Run, bank_name: str | None) -> list[SyncHealth]:
    """The sync health of every bound bank (or of `bank_name`), bound but never synced too."""
    if bank_name is not None:
        bindings(run, bank_name)  # NotFoundError for a bank that is not bound
    where, args = ("WHERE b.name = ?", (bank_name,)) if bank_name is not None else ("", ())
    rows, _ = run("SELECT b.name, x.exchange, x.bound_at, h.last_success, h.last_error,"
                  " h.last_error_at, h.errors, h.fetched, h.added, h.updated, h.deleted,"
                  " h.alert_after FROM exchange_bindings x JOIN banks b ON b.id = x.bank_id"
                  f" LEFT JOIN exchange_sync_health h ON h.bank_id = x.bank_id {where}"
                  " ORDER BY b.name", args)
    return [SyncHealth(bank=r[0], exchange=r[1], bound_at=r[2], last_success=r[3],
                       last_error=r[4], last_error_at=r[5], errors=r[6] or 0,
                       fetched=r[7] or 0, added=r[8] or 0, updated=r[9] or 0,
                       deleted=r[10] or 0,
                       alert_after=DEFAULT_ALERT_AFTER if r[11] is None else r[11])
            for r in rows]
