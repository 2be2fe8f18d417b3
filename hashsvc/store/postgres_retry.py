"""Riding out a PostgreSQL restart: store calls re-run on a lost connection, writes exactly once.

Why: a restart, a failover or a dropped TCP connection kills every transaction in flight. The
pool replaces dead connections as they are taken (`check`), but a call whose connection dies
mid-transaction would fail although a second try a moment later succeeds. So a call that fails
with a connection-class error (see `is_retryable`; never a constraint violation or bad input) is
re-run from the start, as a new transaction, after an exponential backoff with full jitter (so
that many clients do not come back in step), at most `ATTEMPTS` times; then it fails with
`StoreUnavailableError` (gRPC UNAVAILABLE) naming the store, URL redacted.

The hard case is a COMMIT that succeeded on the server while the connection died before its
acknowledgement: re-running would apply the write twice (or report a bank it created as "already
exists"). Every write therefore carries an operation key: its transaction first inserts the key
into `applied_writes` (a primary key, so two tries cannot both claim it; in the statement that
bumps the revision, so it costs no round trip) and at the end records its result there. A
re-run whose key is already present has been applied: it rolls back and answers with the
recorded result. Keys are deleted after `KEY_HOURS`.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, suppress
from dataclasses import asdict
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from hashsvc import metrics
from hashsvc.errors import StoreUnavailableError
from hashsvc.store.model import AddResult, EntryRow
from hashsvc.store.postgres_bulk import PostgresBulkAdder

T = TypeVar("T")

ATTEMPTS = 6  # tries in all; the pool itself waits (POOL_WAIT) for a connection on each
BACKOFF_BASE = 0.1  # seconds before the second try, doubling after each, with full jitter
BACKOFF_CAP = 3.0  # seconds: the longest single pause
KEY_HOURS = 1  # an operation key outlives any retry of its write by far
# SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now. Class
# 08 (connection_exception) and a lost connection (no SQLSTATE at all) are retried too.
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def is_retryable(err: BaseException) -> bool:
    """True for a failure of the connection, which a new transaction may not meet; never for a
    constraint violation, bad input or a cancelled (timed-out) statement."""
    if not isinstance(err, psycopg.OperationalError) or isinstance(err, pg_errors.QueryCanceled):
        return False
    state = err.sqlstate
    return state is None or state.startswith("08") or state in _SHUTDOWN_STATES


def backoff(attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (0-based): full jitter."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt))


def with_retries(kind: str, attempt: Callable[[int], T]) -> T:
    """`attempt(n)` until it does not fail with a retryable error, `ATTEMPTS` tries at most;
    the last retryable error is raised if every try failed (the caller words it)."""
    for number in range(ATTEMPTS):
        try:
            return attempt(number)
        except psycopg.Error as err:
            if not is_retryable(err):
                raise
            if number == ATTEMPTS - 1:
                metrics.STORE_RETRIES_EXHAUSTED.labels(kind).inc()
                raise
            metrics.STORE_RETRIES.labels(kind).inc()
            time.sleep(backoff(number))
    raise AssertionError("unreachable")


def new_operation_key() -> str:
    return uuid.uuid4().hex


class AlreadyApplied(Exception):
    """Raised inside a write transaction whose key is already recorded: roll it back."""

    def __init__(self, result: Any) -> None:
        super().__init__("already applied")
        self.result = result


# The first statement of every write, one round trip: bump the revision (the row lock that makes
# writers take turns), NOTIFY listeners (delivered only if it commits) and claim the operation
# key, if any. The claim needs no lock of its own: an INSERT that meets the key of a transaction
# still in progress waits for it, then sees it if it committed.
BEGIN_WRITE = b"""
WITH bumped AS (
    UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'revision'
    RETURNING value::bigint AS revision
), claimed AS (
    INSERT INTO applied_writes (op, at) SELECT %(key)s, now() WHERE %(key)s::text IS NOT NULL
    ON CONFLICT (op) DO NOTHING RETURNING op
)
SELECT revision, pg_notify(%(channel)s, revision::text),
       %(key)s::text IS NULL OR EXISTS (SELECT 1 FROM claimed)
FROM bumped
"""


def already_applied(conn: psycopg.Connection[Any], key: str) -> AlreadyApplied:
    """The signal to roll back a re-run whose key an earlier, committed try recorded, with the
    result that try recorded."""
    row = conn.execute("SELECT result FROM applied_writes WHERE op = %s", (key,)).fetchone()
    metrics.STORE_WRITES_ALREADY_APPLIED.inc()
    return AlreadyApplied(json.loads(row[0]) if row and row[0] is not None else None)


def record_result(conn: psycopg.Connection[Any], key: str, result: Any) -> None:
    """The last statement of a write, one round trip: its result, for a re-run that finds it
    applied; and the expired keys of older writes go."""
    conn.execute("WITH recorded AS (UPDATE applied_writes SET result = %s WHERE op = %s)"
                 " DELETE FROM applied_writes WHERE at < now() - make_interval(hours => %s)",
                 (json.dumps(result), key, KEY_HOURS))


REPLAY_ROWS = 100_000  # rows an import keeps in memory so that it can be re-run whole

# Opens one write transaction for an import under an operation key; yields its connection and
# the adder (raising `AlreadyApplied` if that key was committed already).
BeginImport = Callable[[str], AbstractContextManager[tuple[psycopg.Connection[Any],
                                                           PostgresBulkAdder]]]


class ReplayingBulkAdder:
    """An import into PostgreSQL that a lost connection does not fail: the rows given so far
    (up to `REPLAY_ROWS`; larger imports, streamed from a file, fail instead and are run again)
    are kept, and a new transaction re-adds them all before going on. It commits once: a re-run
    after a COMMIT whose acknowledgement was lost finds its operation key and its result."""

    def __init__(self, begin: BeginImport, *, expected: int, location: str) -> None:
        self._begin = begin
        self._key = new_operation_key()
        self._location = location
        self._rows: list[EntryRow] | None = [] if expected < REPLAY_ROWS else None
        self._open: AbstractContextManager[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._adder: PostgresBulkAdder | None = None
        self.result = AddResult()
        with_retries("write", self._replay)

    def add(self, entries: Iterable[EntryRow]) -> AddResult:
        rows = list(entries)
        if self._rows is not None:
            self._rows.extend(rows)
            if len(self._rows) > REPLAY_ROWS:
                self._rows = None  # too large to keep: a lost connection fails this import
        assert self._adder is not None
        try:
            batch = self._adder.add(rows)
        except psycopg.Error as err:
            self.close()
            if not is_retryable(err):
                raise
            metrics.STORE_RETRIES.labels("write").inc()
            with_retries("write", self._replay)  # these rows included
            batch = AddResult()  # counted in `result`, not per batch, once replayed
        self.result = self._adder.result
        return batch

    def commit(self) -> None:
        """Finish and COMMIT, re-running the whole import if the connection is lost."""

        def attempt(number: int) -> None:
            try:
                if number:
                    self._replay(number)
                assert self._adder is not None and self._conn is not None and self._open
                self._adder.finish()
                record_result(self._conn, self._key, asdict(self._adder.result))
                self._open.__exit__(None, None, None)  # COMMIT
                self._open = None
                self.result = self._adder.result
            except AlreadyApplied as done:
                self.result = AddResult(**done.result)
            except BaseException:
                self.close()
                raise

        with_retries("write", attempt)

    def close(self) -> None:
        """Roll back the open transaction, if any (a failed or abandoned import)."""
        if self._open is not None:
            opened, self._open = self._open, None
            with suppress(psycopg.Error):
                opened.__exit__(_Abandoned, _Abandoned(), None)

    def _replay(self, number: int) -> None:
        """Open a transaction and add every row kept so far (try `number`, 0 the first)."""
        started = self._adder is not None
        opened = self._begin(self._key)  # raises AlreadyApplied if this import committed
        self._conn, self._adder = opened.__enter__()
        self._open = opened
        try:
            if started and self._rows is None:
                raise StoreUnavailableError(
                    f"PostgreSQL store {self._location}: the connection was lost during an "
                    f"import of more than {REPLAY_ROWS:,} rows, which is not re-run: nothing of "
                    "it was stored; run it again")
            if self._rows:
                self._adder.add(self._rows)
        except BaseException:
            self.close()
            raise


class _Abandoned(Exception):
    """Thrown into an import's transaction to roll it back."""
