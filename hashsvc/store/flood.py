"""The flood guard's stored half: each bank's thresholds and the analysts' releases, in SQL both
store backends run (statements use `?`; PostgreSQL's driver gets `%s`).

Why in the store: scan replicas decide quarantines on their own evidence and cannot write the
store (hashsvc/server/flood_guard.py), but what an analyst decides must reach every one of
them. Both writes bump the revision, like any entry change, so each server reads them on the
watcher pass that sees the revision move, within a second; a server that starts reads them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.limits import LIMITS, check_text, quote

# One statement with `?` marks and its arguments -> the rows it returns (if any) and rowcount.
Run = Callable[[str, tuple[Any, ...]], tuple[list[tuple[Any, ...]], int]]

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS flood_guard (
    bank_id     INTEGER PRIMARY KEY REFERENCES banks (id) ON DELETE CASCADE,
    min_matches INTEGER NOT NULL,
    factor      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS flood_releases (
    entry_id    INTEGER NOT NULL,
    rev         INTEGER NOT NULL,
    released_at REAL NOT NULL,
    reason      TEXT,
    PRIMARY KEY (entry_id, rev)
);
CREATE INDEX IF NOT EXISTS flood_releases_by_rev ON flood_releases (rev);
"""
POSTGRES_SCHEMA = (SQLITE_SCHEMA.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
                   .replace("INTEGER NOT NULL", "BIGINT NOT NULL")
                   .replace("REAL", "DOUBLE PRECISION"))


@dataclass(frozen=True)
class FloodSettings:
    """When one of a bank's entries is quarantined: once it has matched at least `min_matches`
    of the last `window` scans a server served, and at least `factor` times what its own
    history on that server predicts for as many scans. `min_matches` 0 turns the guard off.

    The defaults: one entry matching 1% of uploads is far beyond any real list entry's share
    (a known image is a rare upload), and ten times its own rate is a step, not a drift."""

    min_matches: int = 100
    factor: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.min_matches > 0

    def checked(self, bank: str) -> FloodSettings:
        if not 0 <= self.min_matches <= 1_000_000_000:
            raise HashsvcError(f"bank {quote(bank)}: flood guard min_matches must be 0 (off) "
                               f"to 1e9, got {self.min_matches}")
        if not 1.0 <= self.factor <= 1e6:
            raise HashsvcError(f"bank {quote(bank)}: flood guard factor must be 1 to 1e6, "
                               f"got {self.factor:g}")
        return self


DEFAULT_SETTINGS = FloodSettings()


@dataclass(frozen=True)
class Release:
    """An analyst's word that an entry's matches are real: servers lift its quarantine and
    learn its rate again from then on (hashsvc/server/flood_guard.py)."""

    entry_id: int
    revision: int
    released_at: float
    reason: str | None


def set_settings(run: Run, bank_id: int, settings: FloodSettings) -> None:
    run("INSERT INTO flood_guard (bank_id, min_matches, factor) VALUES (?, ?, ?)"
        " ON CONFLICT (bank_id) DO UPDATE SET min_matches = excluded.min_matches,"
        " factor = excluded.factor", (bank_id, settings.min_matches, settings.factor))


def settings(run: Run) -> dict[str, FloodSettings]:
    """The banks whose thresholds were set, by name (the others use DEFAULT_SETTINGS)."""
    rows, _ = run("SELECT b.name, f.min_matches, f.factor FROM flood_guard f"
                  " JOIN banks b ON b.id = f.bank_id", ())
    return {name: FloodSettings(int(minimum), float(factor)) for name, minimum, factor in rows}


def release(run: Run, entry_id: int, revision: int, reason: str | None) -> Release:
    rows, _ = run("SELECT id FROM entries WHERE id = ?", (entry_id,))
    if not rows:
        raise NotFoundError(f"no entry with id {entry_id}")
    if reason is not None:
        reason = check_text(reason, "reason", LIMITS.reason_chars)
    done = Release(entry_id, revision, time.time(), reason or None)
    run("INSERT INTO flood_releases (entry_id, rev, released_at, reason) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (entry_id, rev) DO NOTHING",
        (entry_id, revision, done.released_at, done.reason))
    return done


def releases_since(run: Run, revision: int) -> list[Release]:
    rows, _ = run("SELECT entry_id, rev, released_at, reason FROM flood_releases"
                  " WHERE rev > ? ORDER BY rev", (revision,))
    return [Release(int(e), int(r), float(at), reason) for e, r, at, reason in rows]
