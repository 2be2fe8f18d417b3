"""Scheduled exchange syncs in the admin service: each bound bank synced when it is due.

Why in the server: an exchange changes every day, and a cron job of `indexer exchange sync` is
one more thing for a team to run and watch. The admin service is already running, and its sync
writes through the same store as the CLI's, so the checkpoint, the provenance and the health
record are the same whichever ran it.

One leader at a time, with nothing elected: a round takes the store's single-writer lock
"sync" (the one every sync takes, `indexer exchange sync` included) without waiting, and a
replica that does not get it skips the round. Whether a bank is due is read from the store
(its last attempt, success or failure, in the sync health) and read again once the lock is
held, so a replica that gets the lock just after another one synced the bank finds it no
longer due: each round is synced by exactly one server. (A SQLite store's lock is a no-op: a
SQLite store serves one machine, and a second sync of a round fetches nothing new.)

A failed sync is recorded in the sync health (by `sync_bank`, for the metrics and the alert),
written to the audit log and logged; it never ends the loop. A failing bank is tried again an
interval later, not at once. Shutdown stops a sync between pages (every applied page is
committed with its checkpoint, so the next sync resumes there).

A "sync now" (AdminService.SyncExchange, exchange_admin.py) takes its turn through the same
`sync_turn`: this process's own lock first (a manual sync and a scheduled round in one worker
take turns), then the store's; a SQLite store's "sync" lock is a no-op, so there a lock file
beside the store makes a server's workers (any of which may answer a sync now) take turns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hashsvc.audit import AuditLog
from hashsvc.errors import HashsvcError, WriterBusyError
from hashsvc.store import SqliteStore, Store
from hashsvc.store.exchange_model import ExchangeBinding, SyncHealth

log = logging.getLogger("hashsvc.exchange_schedule")
LOCK_NAME = "sync"  # indexer/exchanges/sync.py's: the CLI's syncs and these take turns
CHECK_SECONDS = 1.0  # between looks at which banks are due (one small store read)
_IN_PROCESS = threading.Lock()  # this process's syncs, scheduled or manual, take turns


@contextlib.contextmanager
def sync_turn(store: Store) -> Iterator[None]:
    """The right to sync banks of `store` now: this process's sync lock, then the store's
    "sync" lock (every process sharing the store; for SQLite, whose store lock is a no-op, a
    lock file beside it, so a server's workers take turns too). None is waited for:
    `WriterBusyError` naming who holds it."""
    if not _IN_PROCESS.acquire(blocking=False):
        raise WriterBusyError("another exchange sync is running in this server (a scheduled "
                              "round or a sync now): try again when it has finished")
    try:
        with contextlib.ExitStack() as held:
            if isinstance(store, SqliteStore):
                held.enter_context(_file_lock(store.path))
            held.enter_context(store.writer_lock(LOCK_NAME))
            yield
    finally:
        _IN_PROCESS.release()


@contextlib.contextmanager
def _file_lock(store_path: Path) -> Iterator[None]:
    """An flock on `<store>.sync-lock`: released by the kernel when its holder exits."""
    path = store_path.with_name(store_path.name + ".sync-lock")
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WriterBusyError(f"another process is syncing an exchange of {store_path} "
                                  "(another worker of this server): try again when it has "
                                  "finished") from None
        yield
    finally:
        os.close(descriptor)


def next_due(binding: ExchangeBinding, health: SyncHealth, default_every: float) -> float | None:
    """When the schedule syncs the bank next, in Unix seconds: an interval after its last
    attempt (success or failure), at once if it has none; None if it is not on a schedule."""
    every = binding.sync_every(default_every)
    if every <= 0:
        return None
    last = _last_attempt(health)
    return binding.bound_at if last is None else last + every


class ExchangeScheduler:
    def __init__(self, store: Store, audit: AuditLog, default_every: float,
                 stopping: threading.Event) -> None:
        self._store = store
        self._audit = audit
        self._default_every = default_every
        self._stopping = stopping
        self._problem: str | None = None  # the last round's failure, so it is logged once

    def run(self) -> None:
        """The loop of the scheduler thread, until the runtime stops."""
        while not self._stopping.wait(CHECK_SECONDS):
            self.run_round()

    def run_round(self) -> list[str]:
        """Sync every bank now due, if this server gets the lock; the banks it synced (failed
        syncs included). Never raises: the loop must outlive any one round."""
        try:
            if not self._due(time.time()):
                return []
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(sync_turn(self._store))
                except WriterBusyError:
                    log.debug("another server holds the sync lock: skipping this round")
                    return []
                synced = []
                # Read again under the lock: the server that held it may have synced them.
                for bank, after in self._due(time.time()).items():
                    if self._stopping.is_set():
                        break
                    self._sync(bank, after)
                    synced.append(bank)
        except Exception as err:  # the store unreachable, say: logged once, tried next round
            problem = err.message if isinstance(err, HashsvcError) else \
                f"{type(err).__name__}: {err}"
            if problem != self._problem:
                log.error("scheduled exchange sync round failed; trying every round",
                          extra={"error": problem})
            self._problem = problem
            return []
        self._problem = None
        return synced

    def _due(self, now: float) -> dict[str, float | None]:
        """Bank -> the time of its last sync attempt (None: never synced), for every bank
        whose interval has passed since that attempt."""
        bindings = self._store.exchange_bindings()
        if not bindings:  # the usual store: one small read a second, nothing more
            return {}
        health = {h.bank: h for h in self._store.exchange_health()}
        due: dict[str, float | None] = {}
        for binding in bindings:
            state = health.get(binding.bank)
            if state is None:
                continue
            when = next_due(binding, state, self._default_every)
            if when is not None and when <= now:
                due[binding.bank] = _last_attempt(state)
        return due

    def _sync(self, bank: str, after: float | None) -> None:
        from indexer.exchanges.sync import sync_bank_locked  # the indexer only where it syncs

        record: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "event": "exchange_sync", "bank": bank, "trigger": "scheduled",
            # the round this sync belongs to: the attempt before it (None: the first)
            "after": after,
        }
        try:
            result = sync_bank_locked(self._store, bank, stop=self._stopping.is_set)
        except Exception as err:  # recorded in the sync health by sync_bank_locked
            problem = err.message if isinstance(err, HashsvcError) else \
                f"{type(err).__name__}: {err}"
            log.warning("scheduled exchange sync failed", extra={"bank": bank,
                                                                  "error": problem})
            self._audit.write(record | {"outcome": "failed", "error": problem})
            return
        totals = result.totals
        record |= {"outcome": "ok", "exchange": result.exchange, "pages": result.pages,
                   "added": totals.added, "updated": totals.updated,
                   "deleted": totals.deleted, "unchanged": totals.unchanged}
        self._audit.write(record)
        if result.pages:
            log.info("scheduled exchange sync applied changes", extra={
                k: record[k] for k in ("bank", "exchange", "pages", "added", "updated",
                                       "deleted")})


def _last_attempt(health: SyncHealth) -> float | None:
    stamps = [s for s in (health.last_success, health.last_error_at) if s is not None]
    return max(stamps) if stamps else None
