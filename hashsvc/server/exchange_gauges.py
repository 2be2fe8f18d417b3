"""The exchange metrics, from the store: how each exchange-backed bank's syncs went.

Why from the store rather than counted where the sync runs: a sync is usually run by
`indexer exchange sync` (a cron job, a one-off), a process Prometheus never scrapes. It writes
its outcome into the store (SyncHealth); every server reads that on each watcher pass (one small
query) and exports it, so the metrics and the alert hold whatever ran the sync.
"""

from __future__ import annotations

from hashsvc import metrics
from hashsvc.errors import HashsvcError
from hashsvc.store import Store


class ExchangeGauges:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._labels: set[tuple[str, str]] = set()

    def update(self) -> None:
        """Set every bound bank's gauges; a bank unbound or deleted loses its series (in one
        process; with several workers a dead series stays until the worker restarts)."""
        try:
            banks = self._store.exchange_health()
        except HashsvcError:
            # The store unreachable: keep the last values (the outage has its own metrics),
            # and let the watcher pass end as a success (it has served what it had to).
            return
        labels: set[tuple[str, str]] = set()
        for health in banks:
            key = (health.bank, health.exchange)
            labels.add(key)
            metrics.EXCHANGE_LAST_SUCCESS.labels(*key).set(health.last_success or health.bound_at)
            metrics.EXCHANGE_ALERT_AFTER.labels(*key).set(health.alert_after)
            metrics.EXCHANGE_FAILING.labels(*key).set(int(health.failing))
            metrics.EXCHANGE_SYNC_ERRORS.labels(*key).set(health.errors)
            for change, count in (("fetched", health.fetched), ("added", health.added),
                                  ("updated", health.updated), ("deleted", health.deleted)):
                metrics.EXCHANGE_ENTRIES.labels(*key, change).set(count)
        for key in self._labels - labels:
            for gauge in (metrics.EXCHANGE_LAST_SUCCESS, metrics.EXCHANGE_ALERT_AFTER,
                          metrics.EXCHANGE_FAILING, metrics.EXCHANGE_SYNC_ERRORS):
                gauge.remove(*key)
            for change in ("fetched", "added", "updated", "deleted"):
                metrics.EXCHANGE_ENTRIES.remove(*key, change)
        self._labels = labels
