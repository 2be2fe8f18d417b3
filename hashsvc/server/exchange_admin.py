"""The exchange RPCs' work: each bound bank's state (ListExchangeBindings) and "sync now"
(SyncExchange).

Why "sync now" runs on a thread of its own and the call waits a bounded time: a sync takes
as long as its exchange does (pages of a national list, an API that rate-limits), and a call
that held an admission slot and an HTTP request for all of it would tie up the server and time
out in a browser. So the call waits at most `wait_seconds` (default 10, at most 60) and then
answers: with the outcome if the sync ended, else `running`; the sync goes on, and the bank's
state (here, and in the sync health every server reads) shows how it ended. It takes the same
turn a scheduled round takes (`exchange_schedule.sync_turn`), so it never runs beside another
sync of the store, and it is recorded like one: in the sync health by `sync_bank_locked`, and
in the audit trail as an `exchange_sync` record with `trigger: manual` and the caller's name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2
from hashsvc_client.v1 import admin_pb2

from hashsvc.audit import AuditLog
from hashsvc.audit_tail import Tail, unix_time
from hashsvc.errors import HashsvcError
from hashsvc.limits import LIMITS, check_name
from hashsvc.server import scope
from hashsvc.server.exchange_schedule import next_due, sync_turn
from hashsvc.store import Store
from hashsvc.store.exchange_model import ExchangeBinding, PageResult, SyncHealth
from hashsvc.store.feedback_model import OutboxHealth

DEFAULT_WAIT_SECONDS = 10.0
# The last sync of each bank is looked for in this much of the trail's tail: syncs are rare
# beside matches, and a bank this server has not synced for that long shows none.
LAST_RUN_TAIL_BYTES = 8 << 20


@dataclass
class SyncRun:
    """One sync now, as its thread fills it in."""

    bank: str
    caller: str
    exchange: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float = 0.0
    outcome: str = "running"
    error: str = ""
    pages: int = 0
    counts: PageResult = field(default_factory=PageResult)
    feedback_sent: int = 0
    feedback_failed: int = 0
    refused: HashsvcError | None = None  # the turn was not free: nothing ran
    decided: threading.Event = field(default_factory=threading.Event)  # turn taken or refused
    settled: threading.Event = field(default_factory=threading.Event)  # refused or ended

    def to_proto(self) -> admin_pb2.ExchangeSyncRun:
        return admin_pb2.ExchangeSyncRun(
            at=self.ended_at or self.started_at, trigger="manual", outcome=self.outcome,
            error=self.error, pages=self.pages, caller=self.caller,
            counts=admin_pb2.ExchangeSyncCounts(
                fetched=self.counts.added + self.counts.updated + self.counts.unchanged,
                added=self.counts.added, updated=self.counts.updated,
                deleted=self.counts.deleted, unchanged=self.counts.unchanged))


class ExchangeAdmin:
    def __init__(self, store: Store, audit: AuditLog, default_every: float | None,
                 stopping: threading.Event) -> None:
        """`default_every`: the server's schedule for banks bound without `--every` (None:
        this server schedules no syncs)."""
        self._store = store
        self._audit = audit
        self._default_every = default_every
        self._stopping = stopping
        self._lock = threading.Lock()
        self._running: dict[str, SyncRun] = {}  # bank -> its sync now still running here

    # ---- ListExchangeBindings ----------------------------------------------------------------

    def bindings(self, bank: str) -> list[admin_pb2.ExchangeBindingStatus]:
        name = scope.require(check_name(bank)) if bank else None
        bindings = [b for b in self._store.exchange_bindings(name) if scope.visible(b.bank)]
        health = {h.bank: h for h in self._store.exchange_health(name)}
        with self._lock:  # before the trail: a run that ends now has written its record
            running_now = dict(self._running)
        last_runs = self._last_runs({b.bank for b in bindings} - set(running_now))
        now = time.time()
        answers = []
        for binding in bindings:
            answer = _status(binding, health[binding.bank], now, self._default_every,
                             self._store.feedback_outbox_health(binding.bank))
            running = running_now.get(binding.bank)
            if running is not None:
                answer.last_run.CopyFrom(running.to_proto())
            elif binding.bank in last_runs:
                answer.last_run.CopyFrom(last_runs[binding.bank])
            answers.append(answer)
        return answers

    def _last_runs(self, banks: set[str]) -> dict[str, admin_pb2.ExchangeSyncRun]:
        found: dict[str, admin_pb2.ExchangeSyncRun] = {}
        if not banks:
            return found
        for record in Tail(self._audit.path, b'"event":"exchange_sync"', LAST_RUN_TAIL_BYTES):
            bank = record.get("bank")
            if bank in banks and bank not in found:
                found[bank] = _run_from_record(record)
                if len(found) == len(banks):
                    break
        return found

    # ---- SyncExchange ------------------------------------------------------------------------

    def sync_now(self, bank: str, caller: str, wait_seconds: float) -> tuple[SyncRun, bool]:
        """Start one sync of `bank` and wait for it at most `wait_seconds` (0: the default);
        the run and whether it has finished. `WriterBusyError` if another sync holds the
        turn; nothing ran then."""
        if not (0 <= wait_seconds <= LIMITS.sync_wait_seconds):  # NaN too
            raise HashsvcError(f"wait_seconds must be between 0 and {LIMITS.sync_wait_seconds}"
                               f" (0: {DEFAULT_WAIT_SECONDS:g}), got {wait_seconds:g}")
        name = scope.require(check_name(bank)) if bank else None
        if name is None:
            raise HashsvcError("bank: name the exchange-bound bank to sync")
        [binding] = self._store.exchange_bindings(name)  # NotFoundError if it is not bound
        run = SyncRun(bank=name, caller=caller, exchange=binding.exchange)
        threading.Thread(target=self._run, args=(run,), name="exchange-sync-now",
                         daemon=True).start()
        # The turn first, not waited for (the locks are tried once; a store connection has
        # its own timeout): a call that answers "running" has the turn, never a refusal to come.
        run.decided.wait()
        finished = run.settled.wait(wait_seconds or DEFAULT_WAIT_SECONDS)
        if run.refused is not None:
            raise run.refused
        return run, finished

    def _run(self, run: SyncRun) -> None:
        """The sync's thread: settles the run whatever happens, so no call waits on a thread
        that died."""
        try:
            with contextlib.ExitStack() as turn:
                try:
                    turn.enter_context(sync_turn(self._store))
                except Exception as err:  # busy, or the store unreachable: nothing ran
                    run.refused = err if isinstance(err, HashsvcError) else HashsvcError(
                        f"could not take the sync lock: {type(err).__name__}: {err}")
                    return
                with self._lock:
                    self._running[run.bank] = run
                run.decided.set()
                self._sync(run)
        finally:
            with self._lock:
                if self._running.get(run.bank) is run:  # not a refused run's: the one it met
                    del self._running[run.bank]
            run.decided.set()
            run.settled.set()

    def _sync(self, run: SyncRun) -> None:
        from indexer.exchanges.sync import sync_bank_locked  # the indexer only where it syncs

        record: dict[str, Any] = {"event": "exchange_sync", "bank": run.bank,
                                  "trigger": "manual", "caller": run.caller}
        try:
            result = sync_bank_locked(self._store, run.bank, stop=self._stopping.is_set)
        except Exception as err:  # recorded in the sync health by sync_bank_locked
            run.outcome = "failed"
            run.error = err.message if isinstance(err, HashsvcError) else \
                f"{type(err).__name__}: {err}"
            record |= {"outcome": "failed", "error": run.error}
        else:
            run.outcome, run.exchange, run.pages = "ok", result.exchange, result.pages
            run.counts = result.totals
            run.feedback_sent, run.feedback_failed = result.feedback_sent, result.feedback_failed
            record |= {"outcome": "ok", "exchange": result.exchange, "pages": result.pages,
                       "added": result.totals.added, "updated": result.totals.updated,
                       "deleted": result.totals.deleted, "unchanged": result.totals.unchanged}
        run.ended_at = time.time()
        stamp = dt.datetime.fromtimestamp(run.ended_at, dt.UTC).isoformat(timespec="milliseconds")
        self._audit.write({"time": stamp, **record})


def _status(binding: ExchangeBinding, health: SyncHealth, now: float,
            default_every: float | None,
            outbox: OutboxHealth) -> admin_pb2.ExchangeBindingStatus:
    credentials = binding.credentials
    config = struct_pb2.Struct()
    config.update(binding.config)
    every = binding.sync_every(default_every) if default_every is not None else 0.0
    due = next_due(binding, health, default_every) if default_every is not None else None
    return admin_pb2.ExchangeBindingStatus(
        bank=binding.bank, exchange=binding.exchange, config=config,
        credentials=f"{credentials.source}:{credentials.name}" if credentials else "",
        bound_at=binding.bound_at, last_page_at=binding.synced_at or 0.0,
        last_success=health.last_success or 0.0, last_error=health.last_error or "",
        last_error_at=health.last_error_at or 0.0, failing=health.failing,
        stale=health.stale(now), errors=health.errors,
        totals=admin_pb2.ExchangeSyncCounts(fetched=health.fetched, added=health.added,
                                            updated=health.updated, deleted=health.deleted),
        sync_every_seconds=max(every, 0.0), next_due_at=due or 0.0,
        alert_after_seconds=health.alert_after,
        feedback=admin_pb2.FeedbackOutboxStatus(
            pending=outbox.pending, sent=outbox.sent, failed_attempts=outbox.failed_attempts,
            last_error=outbox.last_error or "", last_error_at=outbox.last_error_at or 0.0))


def _run_from_record(record: dict[str, Any]) -> admin_pb2.ExchangeSyncRun:
    def count(key: str) -> int:
        value = record.get(key, 0)
        return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0

    return admin_pb2.ExchangeSyncRun(
        at=unix_time(record.get("time")), trigger=str(record.get("trigger") or "scheduled"),
        outcome=str(record.get("outcome", "")), error=str(record.get("error") or ""),
        pages=count("pages"), caller=str(record.get("caller") or ""),
        counts=admin_pb2.ExchangeSyncCounts(
            fetched=count("added") + count("updated") + count("unchanged"),
            added=count("added"), updated=count("updated"), deleted=count("deleted"),
            unchanged=count("unchanged")))
