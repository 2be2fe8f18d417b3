"""Syncing a bank from its exchange: page after page from the stored checkpoint, each page
applied together with its checkpoint in one store transaction.

Why that is enough to survive a crash: the store holds exactly the pages it has applied and
the checkpoint after the last of them, so a sync killed at any instant (even inside a page's
transaction, which then rolls back) resumes from that checkpoint, fetching again the page it
had not finished: nothing lost, nothing applied twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from hashsvc.errors import HashsvcError
from hashsvc.store import Store
from hashsvc.store.base import redact
from hashsvc.store.exchange_model import PageResult
from indexer.exchanges import Exchange, FeedbackTaker, open_exchange

LOCK_NAME = "sync"
log = logging.getLogger("indexer.exchanges")


@dataclass
class SyncResult:
    bank: str
    exchange: str
    pages: int = 0
    totals: PageResult = field(default_factory=PageResult)
    checkpoint: str | None = None
    feedback_sent: int = 0
    feedback_failed: int = 0


def sync_bank(
    store: Store, bank: str, *, exchange: Exchange | None = None,
    on_page: Callable[[SyncResult], None] | None = None, max_pages: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> SyncResult:
    """Apply every page the bank's exchange has after its checkpoint (at most `max_pages`).

    Holds the store's single-writer lock "sync", so two syncs of one store take turns; the
    store also refuses a page whose starting checkpoint is stale, whatever the lock."""
    with store.writer_lock(LOCK_NAME):
        return sync_bank_locked(store, bank, exchange=exchange, on_page=on_page,
                                max_pages=max_pages, stop=stop)


def sync_bank_locked(
    store: Store, bank: str, *, exchange: Exchange | None = None,
    on_page: Callable[[SyncResult], None] | None = None, max_pages: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> SyncResult:
    """`sync_bank` for a caller that already holds the "sync" lock (the admin service's
    scheduler, which takes it once for a round of banks). `stop` is asked before each page:
    True ends the sync there, between pages, with every page applied so far kept (the next
    sync resumes from its checkpoint)."""
    binding = store.exchange_bindings(bank)[0]
    result = SyncResult(bank=bank, exchange=binding.exchange, checkpoint=binding.checkpoint)
    try:
        client = exchange if exchange is not None else open_exchange(binding)
        push_feedback(store, client, result)
        while max_pages is None or result.pages < max_pages:
            if stop is not None and stop():
                break
            page = client.fetch(result.checkpoint)
            if page.checkpoint == result.checkpoint and not page.more:
                break  # nothing new upstream: no entry written, no revision bump
            result.totals += store.apply_exchange_page(bank, page, result.checkpoint)
            result.checkpoint = page.checkpoint
            result.pages += 1
            if on_page is not None:
                on_page(result)
            if not page.more:
                break
    except Exception as err:
        _record_failure(store, result, err)
        raise
    # written by whatever ran the sync, read by every server (metrics and alerts)
    store.record_exchange_sync(bank, result.totals)
    return result


def push_feedback(store: Store, client: Exchange, result: SyncResult) -> None:
    """Send the bank's queued verdicts to its exchange, oldest first, each marked sent as soon
    as the exchange took it (a sent verdict is never selected again). A failed send is
    counted and kept with its error for `exchange status`, and retried by the next sync; it
    does not fail the sync, whose entries are another matter. An exchange without
    `send_feedback` (a hash list, TAT) leaves its verdicts queued, shown as pending."""
    if not hasattr(client, "send_feedback"):
        return
    taker: FeedbackTaker = client  # type: ignore[assignment]  # checked just above
    for item in store.pending_feedback(result.bank):
        try:
            taker.send_feedback(item.upstream_id, item.verdict, item.reason)
        except Exception as err:
            problem = (err.message if isinstance(err, HashsvcError)
                       else f"{type(err).__name__}: {err}")
            log.warning("%s: feedback %d on %s not sent: %s", result.bank, item.feedback_id,
                        item.upstream_id, redact(problem))
            store.mark_feedback_sent(item, redact(problem))
            result.feedback_failed += 1
            continue
        store.mark_feedback_sent(item)
        result.feedback_sent += 1


def _record_failure(store: Store, result: SyncResult, err: Exception) -> None:
    """Keep the failure (the pages applied before it count) for metrics and `exchange status`;
    if the store itself is what failed, the original error is the one worth raising."""
    problem = err.message if isinstance(err, HashsvcError) else f"{type(err).__name__}: {err}"
    try:
        store.record_exchange_sync(result.bank, result.totals, redact(problem))
    except HashsvcError as also:
        log.warning("%s: could not record the failed sync: %s", result.bank, also.message)
