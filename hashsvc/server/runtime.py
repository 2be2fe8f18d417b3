"""What a running server holds: the store, the scanner and its snapshot, and health.

Hot reload: a watcher thread reads `snapshots/current` every `reload_interval` seconds. A version
is the directory name `current` holds, so a reload happens exactly when that name changes. A new
version is loaded (and verified: manifest, checksums, every array against the counts) beside the
one being served, then swapped in with one reference assignment, so no call fails or waits. A
snapshot that fails to load, for whatever reason, is refused: counted, logged once, and not
retried until `current` names another version; the old one keeps serving.

Freshness: on the same tick the watcher reads the store's revision; when it has moved, the
entries changed since the snapshot become a new `Delta` (see delta.py), swapped in the same way.
An admin call that changes entries refreshes its own worker's delta before it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2

from hashsvc import metrics
from hashsvc.audit import AuditLog
from hashsvc.config import ServerConfig
from hashsvc.errors import SnapshotError
from hashsvc.matching.delta import Delta
from hashsvc.scanner import Scanner
from hashsvc.snapshot import Snapshot, current_version, load, version_dir
from hashsvc.store import open_store

log = logging.getLogger("hashsvc.runtime")

SERVICES = ("hashsvc.v1.ScanService", "hashsvc.v1.AdminService")


class Runtime:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.snapshots_dir = config.data_home.snapshots_dir
        self.store = open_store(config.store_target)
        self.scanner = Scanner(limits=config.limits, fast_pdq=config.scan_fast_pdq)
        self.audit = AuditLog(config.resolved_audit_log, all_scans=config.audit_all_scans)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.failed_loads = 0
        self._refused: str | None = None
        self._watch_problem: str | None = None  # the last pass's failure, so it is logged once
        self._reload_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._entry_labels: set[tuple[str, str]] = set()
        # Called by the watcher on every pass: gauges kept current from here rather than per call.
        self.gauge_updaters: list[Callable[[], None]] = []
        self.set_serving(False)
        metrics.SNAPSHOT_LOADED.set(0)

    def start(self) -> None:
        """Load what is current (if anything: health stays NOT_SERVING until then); watch."""
        self.reload()
        self._watcher = threading.Thread(target=self._watch, name="snapshot-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        self.set_serving(False)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.store.close()
        self.audit.close()

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", *SERVICES):
            self.health.set(service, status)

    def reload(self) -> bool:
        """Load `current` if it is new; True if a new snapshot is now being served."""
        with self._reload_lock:
            version = current_version(self.snapshots_dir)
            loaded = self.scanner.snapshot
            if version != self._refused:
                self._refused = None  # `current` moved on: that version may be tried again later
            if version is None or version == self._refused:
                return False
            if loaded is not None and loaded.version == version:
                return False
            started = time.perf_counter()
            try:
                snapshot = load(version_dir(self.snapshots_dir, version))
            except Exception as err:  # any failure to load is a refusal, not a retry loop
                self._refuse(version, err)
                return False
            self.scanner.swap(snapshot, self._delta_for(snapshot))
            self.set_serving(True)
            seconds = time.perf_counter() - started
            self._record_loaded(snapshot, seconds)
            log.info("serving snapshot", extra={
                "version": version, "entries": snapshot.entry_count,
                "load_seconds": round(seconds, 3),
            })
            return True

    def _refuse(self, version: str, err: Exception) -> None:
        self.failed_loads += 1
        metrics.SNAPSHOT_LOAD_FAILURES.inc()
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
        return Delta.build(changes, self.store.list_banks())

    def _record_loaded(self, snapshot: Snapshot, seconds: float) -> None:
        metrics.SNAPSHOT_LOAD_SECONDS.observe(seconds)
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
        while not self._stopping.wait(self.config.reload_interval):
            self.tick()

    def tick(self) -> None:
        """One pass of the watcher: gauges, a new snapshot, store changes. Never raises, since
        the watcher must outlive any one bad pass; a failure that repeats pass after pass (the
        store unreadable, say) is logged when it starts and when it ends, not every pass."""
        try:
            for update in self.gauge_updaters:
                update()
            self.reload()
            self.refresh_delta()
            snapshot = self.scanner.snapshot
            if snapshot is not None:
                metrics.SNAPSHOT_AGE.set(time.time() - snapshot.created_at)
        except Exception as err:
            problem = f"{type(err).__name__}: {err}"
            if problem != self._watch_problem:
                log.exception("snapshot watcher pass failed; retrying every pass")
            self._watch_problem = problem
        else:
            if self._watch_problem is not None:
                log.info("snapshot watcher pass succeeded again")
            self._watch_problem = None
