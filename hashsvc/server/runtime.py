"""What a running server holds: the store, the scanner and its snapshot, and health.

Hot reload: the snapshot repository's pointer (`snapshots/current`, or `current` in a bucket;
see hashsvc/snapshot/repository.py) is read by the watcher thread every `reload_interval` seconds
for a local directory. A bucket is read by a poller thread of its own, every
`snapshot_poll_interval`, each wait drawn from 0.5-1.5 times that so a fleet of replicas never
polls in step; its network calls (and their timeouts and retries while a bucket is unreachable)
never hold up the watcher's store changes, and only the swap takes the lock they share.

A version is the name the pointer holds, so a reload happens exactly when that name changes. A
new version is checked out (from a bucket: downloaded into the local cache, only the objects it
lacks, each verified), loaded (and verified: manifest, checksums, every array against the
counts) beside the one being served, then swapped in with one reference assignment, so no call
fails or waits. A snapshot that fails to fetch or load is refused: counted, logged once, and not
retried until the pointer names another version; the old one keeps serving. A repository that
cannot be reached is not a refusal: the replica keeps serving, logs the outage once, counts it,
and reports the seconds since its last good read.

Freshness: on the same tick the watcher reads the store's revision; when it has moved, the
entries changed since the snapshot become a new `Delta` (see delta.py), swapped in the same way.
A layered snapshot's own changes since its base (snapshot/layering.py) lie under that delta.
A store that notifies its changes (PostgreSQL: LISTEN/NOTIFY) wakes the watcher at once; the
revision read on every tick stays the truth, so a missed notification costs at most one interval.
An admin call that changes entries refreshes its own worker's delta before it returns.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from grpc_health.v1 import health

from hashsvc import metrics
from hashsvc.audit import AuditLog
from hashsvc.config import ServerConfig
from hashsvc.errors import RepositoryUnavailableError, SnapshotError, SnapshotFetchError
from hashsvc.matching.delta import Delta
from hashsvc.scanner import Scanner
from hashsvc.server.exchange_schedule import ExchangeScheduler
from hashsvc.server.flood_guard import FloodGuard, Quarantine, StoreFollower
from hashsvc.server.readiness import SERVICES_BY_ROLE, Readiness
from hashsvc.snapshot import Snapshot, load
from hashsvc.snapshot.cache import FetchStats
from hashsvc.snapshot.repository import open_repository
from hashsvc.store import open_store
from hashsvc.store.flood import Release

log = logging.getLogger("hashsvc.runtime")
_MIN_TICK_GAP = 0.02  # seconds between watcher passes woken by store notifications
SYNC_STOP_WAIT = 30.0  # seconds a stopping server waits for a scheduled sync's page in flight


class Runtime:
    def __init__(self, config: ServerConfig, *, schedules_syncs: bool = True) -> None:
        """`schedules_syncs`: this process runs the scheduled exchange syncs (if its role and
        config have them): one worker of several does, the others would only wait on it."""
        self.config = config
        self._schedules_syncs = schedules_syncs
        self.repository = open_repository(
            config.resolved_snapshots, cache_dir=config.resolved_snapshot_cache,
            endpoint_url=config.s3_endpoint_url or None,
            poll_interval=config.snapshot_poll_interval)
        # A scan replica reads the store (its live delta) and never writes it.
        self.store = open_store(config.store_target, read_only=config.role == "scan")
        self.scanner = Scanner(limits=config.limits, fast_pdq=config.scan_fast_pdq)
        self.audit = AuditLog(config.resolved_audit_log, all_scans=config.audit_all_scans)
        # The flood guard, on this process's own scans; None when `flood_window` is 0 or the
        # process serves no scans.
        self.flood_guard: FloodGuard | None = None
        self.flood_follower: StoreFollower | None = None
        if config.flood_window > 0 and config.role != "admin":
            self.flood_guard = FloodGuard(config.flood_window, self._quarantined)
            self.flood_follower = StoreFollower(self.flood_guard, self.store, self._released)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.failed_loads = 0
        self._refused: str | None = None
        self._watch_problem: str | None = None  # the last pass's failure, so it is logged once
        self._outage: str | None = None  # the repository's last failure, so it is logged once
        self._pointer: str | None = None  # what the pointer named when last read
        self._pointer_read_at = time.time()
        self._fetch_lock = threading.Lock()  # one reload at a time: pointer, fetch, load
        self._reload_lock = threading.Lock()  # the swap of a snapshot or a delta
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._scheduler: threading.Thread | None = None
        self._entry_labels: set[tuple[str, str]] = set()
        # Called by the watcher on every pass: gauges kept current from here rather than per call.
        self.gauge_updaters: list[Callable[[], None]] = []
        # Gauges read from the store: after the snapshot and delta, which must not wait on them.
        self.store_gauge_updaters: list[Callable[[], None]] = []
        self.readiness = Readiness(self.health, SERVICES_BY_ROLE[config.role],
                                   config.max_snapshot_age)  # NOT_SERVING until a snapshot loads
        metrics.SNAPSHOT_LOADED.set(0)

    def start(self) -> None:
        """Load what is current (if anything: health stays NOT_SERVING until then); watch."""
        self.reload()
        try:  # releases and thresholds before the first scan; else the first watcher pass
            self.follow_flood_guard()
        except Exception:
            log.exception("flood guard: could not read the store; retrying every pass")
        self._watcher = threading.Thread(target=self._watch, name="snapshot-watcher", daemon=True)
        self._watcher.start()
        if self.repository.poll_interval > 0:
            self._poller = threading.Thread(target=self._poll, name="snapshot-poller",
                                            daemon=True)
            self._poller.start()
        if self._schedules_syncs and self.config.role != "scan" and self.config.exchange_sync:
            scheduler = ExchangeScheduler(self.store, self.audit,
                                          self.config.exchange_sync_every, self._stopping)
            self._scheduler = threading.Thread(target=scheduler.run, name="exchange-sync",
                                               daemon=True)
            self._scheduler.start()

    @property
    def stopping(self) -> threading.Event:
        """Set once the server is stopping: long work (a sync now) ends between its steps."""
        return self._stopping

    def stop(self) -> None:
        self._stopping.set()
        self.readiness.drain()
        for thread in (self._watcher, self._poller):
            if thread is not None:
                thread.join(timeout=5)
        if self._scheduler is not None:  # stops between pages: one fetch and apply at most
            self._scheduler.join(timeout=SYNC_STOP_WAIT)
        self.store.close()
        self.audit.close()

    def reload(self) -> bool:
        """Load the version the pointer names if it is new; True if a new snapshot is now being
        served. Reads the pointer now, whatever the poll schedule."""
        with self._fetch_lock:
            loaded = self.scanner.snapshot
            try:
                version = self.repository.current_version()
                self._pointer, self._pointer_read_at = version, time.time()
                self._repository_available()
            except RepositoryUnavailableError as err:
                self._repository_unavailable(err)
                # Started during an outage: serve what the cache holds rather than nothing.
                version = self.repository.fallback() if loaded is None else None
                if version is None:
                    return False
                log.warning("serving the newest cached snapshot until the repository is "
                            "reachable", extra={"version": version})
            self.readiness.track(served=loaded.version if loaded else None, current=version)
            if version != self._refused:
                self._refused = None  # the pointer moved on: that version may be tried again
            if version is None or version == self._refused:
                return False
            if loaded is not None and loaded.version == version:
                return False
            started = time.perf_counter()
            try:
                with self.repository.checkout(version) as (directory, fetched):
                    snapshot = load(directory)
            except RepositoryUnavailableError as err:  # not the version's fault: next poll
                self._repository_unavailable(err)
                return False
            except Exception as err:  # any failure to load is a refusal, not a retry loop
                self._refuse(version, err)
                return False
            with self._reload_lock:
                self.scanner.swap(snapshot, self._delta_for(snapshot))
            self.readiness.track(served=version, current=version)
            seconds = time.perf_counter() - started
            self._record_loaded(snapshot, seconds, fetched)
            log.info("serving snapshot", extra={
                "version": version, "entries": snapshot.entry_count,
                "load_seconds": round(seconds, 3),
                "downloaded_objects": fetched.downloaded_objects,
                "downloaded_bytes": fetched.downloaded_bytes,
            })
            self.repository.retain({version} | ({loaded.version} if loaded else set()))
            return True

    def current_in_repository(self) -> str | None:
        """The version the pointer names: read now from a local directory, as last polled from
        a bucket (an admin call must not wait on one)."""
        if self.repository.poll_interval == 0:
            return self.repository.current_version()
        return self._pointer

    def _repository_unavailable(self, err: RepositoryUnavailableError) -> None:
        metrics.SNAPSHOT_FETCH_FAILURES.labels("unavailable").inc()
        if self._outage != err.message:
            loaded = self.scanner.snapshot
            log.error("snapshot repository unavailable; still serving what this replica has",
                      extra={"error": err.message,
                             "serving": loaded.version if loaded else None})
        self._outage = err.message

    def _repository_available(self) -> None:
        if self._outage is not None:
            log.info("snapshot repository reachable again",
                     extra={"repository": self.repository.location})
        self._outage = None

    def _refuse(self, version: str, err: Exception) -> None:
        self.failed_loads += 1
        metrics.SNAPSHOT_LOAD_FAILURES.inc()
        if isinstance(err, SnapshotFetchError):
            metrics.SNAPSHOT_FETCH_FAILURES.labels(err.fetch_reason).inc()
        self._refused = version
        loaded = self.scanner.snapshot
        error = err.message if isinstance(err, SnapshotError) else f"{type(err).__name__}: {err}"
        log.error("refused snapshot; still serving the previous one",
                  extra={"version": version, "error": error,
                         "serving": loaded.version if loaded else None})

    def refresh_delta(self) -> bool:
        """Apply store changes made since the served snapshot; True if the delta changed."""
        with self._reload_lock:
            matcher = self.scanner.matcher
            if matcher is None or self.store.revision() == matcher.delta.revision:
                return False
            self.scanner.apply_delta(self._delta_for(matcher.snapshot))
            return True

    def _delta_for(self, snapshot: Snapshot) -> Delta:
        changes = self.store.changes_since(int(snapshot.manifest["store_revision"]))
        return Delta.for_snapshot(snapshot, changes, self.store.list_banks())

    def _record_loaded(self, snapshot: Snapshot, seconds: float, fetched: FetchStats) -> None:
        metrics.SNAPSHOT_LOAD_SECONDS.observe(seconds)
        metrics.SNAPSHOT_FETCHED_OBJECTS.inc(fetched.downloaded_objects)
        metrics.SNAPSHOT_FETCHED_BYTES.inc(fetched.downloaded_bytes)
        metrics.SNAPSHOT_LOADED.set(1)
        metrics.SNAPSHOT_CREATED.set(snapshot.created_at)
        metrics.SNAPSHOT_LOADED_AT.set(snapshot.loaded_at)
        metrics.SNAPSHOT_AGE.set(time.time() - snapshot.created_at)
        metrics.SNAPSHOT_REVISION.set(snapshot.manifest["store_revision"])
        labels = {(algorithm, bank)
                  for bank, counts in snapshot.manifest["counts"]["by_bank"].items()
                  for algorithm in counts}
        for algorithm, bank in self._entry_labels - labels:  # banks gone: zero, not stale
            metrics.INDEX_ENTRIES.labels(algorithm, bank).set(0)
        for bank, counts in snapshot.manifest["counts"]["by_bank"].items():
            for algorithm, count in counts.items():
                metrics.INDEX_ENTRIES.labels(algorithm, bank).set(count)
        self._entry_labels = labels

    def _watch(self) -> None:
        # Woken early by a store that notifies its changes (PostgreSQL's LISTEN/NOTIFY); every
        # pass reads the revision anyway, so a missed notification costs one interval at most.
        # A burst of writes wakes it once per commit, so passes are kept `_MIN_TICK_GAP` apart:
        # the burst costs a few delta rebuilds, not one per write.
        last = 0.0
        while not self._stopping.is_set():
            self.store.wait_for_change(self.config.reload_interval)
            gap = _MIN_TICK_GAP - (time.monotonic() - last)
            if (gap > 0 and self._stopping.wait(gap)) or self._stopping.is_set():
                break
            last = time.monotonic()
            self.tick()

    def follow_flood_guard(self) -> None:
        """Bring the flood guard up to the store (thresholds, releases, disabled entries)."""
        if self.flood_follower is not None:
            self.flood_follower()

    def _quarantined(self, quarantine: Quarantine) -> None:
        match = quarantine.match
        fields = {"entry_id": match.entry_id, "bank": match.bank,
                  "external_id": match.external_id, "algorithm": match.algorithm,
                  "query_hash": quarantine.query_hash,
                  "matches_in_window": quarantine.in_window, "window_scans": quarantine.window,
                  "expected_in_window": round(quarantine.expected, 3)}
        log.warning("flood guard quarantined an entry", extra=fields)
        self.audit.flood("flood_quarantine", **fields)
        if self.flood_follower is not None:
            self.flood_follower.export()

    def _released(self, release: Release) -> None:
        fields = {"entry_id": release.entry_id, "store_revision": release.revision}
        log.info("flood guard released an entry", extra=fields)
        self.audit.flood("flood_release", **fields, reason=release.reason)

    def next_poll_wait(self) -> float:
        """Seconds until the poller next reads a bucket's pointer: jittered, so that replicas
        started together (a rollout) spread their reads instead of arriving as a herd."""
        return self.repository.poll_interval * random.uniform(0.5, 1.5)

    def _poll(self) -> None:
        while not self._stopping.wait(self.next_poll_wait()):
            try:
                self.reload()
            except Exception:  # the poller must outlive any one bad poll (a store error, say)
                log.exception("snapshot poll failed; retrying at the next poll")

    def tick(self) -> None:
        """One pass of the watcher: gauges, a new snapshot, store changes. Never raises, since
        the watcher must outlive any one bad pass; a failure that repeats pass after pass (the
        store unreadable, say) is logged when it starts and when it ends, not every pass."""
        try:
            for update in self.gauge_updaters:
                update()
            if self.repository.poll_interval == 0:  # a local directory; a bucket has a poller
                self.reload()
            metrics.SNAPSHOT_POINTER_AGE.set(time.time() - self._pointer_read_at)
            self.refresh_delta()
            snapshot = self.scanner.snapshot
            if snapshot is not None:
                metrics.SNAPSHOT_AGE.set(time.time() - snapshot.created_at)
            self.follow_flood_guard()
            for update in self.store_gauge_updaters:
                update()
        except Exception as err:
            problem = f"{type(err).__name__}: {err}"
            if problem != self._watch_problem:
                log.exception("snapshot watcher pass failed; retrying every pass")
            self._watch_problem = problem
        else:
            if self._watch_problem is not None:
                log.info("snapshot watcher pass succeeded again")
            self._watch_problem = None
