"""The web console's sessions, in SQL both store backends run (`?` marks, like flood.py).

Why in the store: a console session must end *everywhere* when its analyst signs out. The
cookie alone cannot say that (a copy of it stays valid until it expires), and a worker's memory
is not shared with the other workers, nor with the other admin servers of a shared PostgreSQL
store. So a cookie is honoured only while its session's row is here; signing out deletes the
row. The row holds a digest of the session id, never the id, the cookie or the key: a copy of
the table signs nobody in. Session writes do not bump the revision (servers do not reload).
"""

from __future__ import annotations

import time

from hashsvc.store.exchange_sql import Run

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_sessions (
    id_digest  TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at);
"""
POSTGRES_SCHEMA = SQLITE_SCHEMA.replace("REAL", "DOUBLE PRECISION")


def start(run: Run, id_digest: str, expires_at: float) -> None:
    """Record a new session, and forget the sessions that have expired (so the table holds
    only live sessions, however many sign-ins there were)."""
    run("DELETE FROM console_sessions WHERE expires_at <= ?", (time.time(),))
    run("INSERT INTO console_sessions (id_digest, expires_at) VALUES (?, ?)",
        (id_digest, expires_at))


def is_active(run: Run, id_digest: str) -> bool:
    rows, _ = run("SELECT 1 FROM console_sessions WHERE id_digest = ? AND expires_at > ?",
                  (id_digest, time.time()))
    return bool(rows)


def end(run: Run, id_digest: str) -> bool:
    """Delete the session's row; False if there was none (already ended or expired)."""
    _, count = run("DELETE FROM console_sessions WHERE id_digest = ?", (id_digest,))
    return count > 0
