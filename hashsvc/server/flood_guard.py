"""The flood guard: a known entry that suddenly matches far more uploads than its own history
(a near-blank image added by mistake, say) is quarantined: its matches are still reported, as
QUARANTINED, but no longer make a scan `matched`, until an analyst releases or disables it.

Why per serving process, over its own scans: a scan replica cannot write the store (a SQLite
replica opens it read-only) and sees only its share of the traffic, so each one decides on its
own evidence, at no cost to the scan path beyond a counter and, for scans that match, one lock.
With traffic balanced per call every replica sees the same shares, so a real flood trips each of
them within about the same number of its own scans.

Why the window counts scans, not seconds: the measure is an entry's *share of uploads*, which
a day's traffic peaks do not move, and which tests and replays can drive exactly. An entry is
quarantined at the scan where, over this process's last `window` scans, it has matched

    at least the bank's `min_matches`, and at least `factor` x what its own history predicts

(its matches per scan before the window, since this process started, times `window`; a process
knows no history in its first window, where `min_matches` alone applies). That scan's match is
the first reported QUARANTINED.

A release (`indexer entries release`, AdminService.ReleaseEntry) reaches every server through
the store (store/flood.py); it lifts the quarantine and resets the entry's baseline: its rate
in the window at the release is its normal from then on, and for one window after the release
(or after a start, for entries released before it) the entry is not quarantined while the
server learns that rate. So the flood it was released in does not quarantine it again; ten times
that does.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from hashsvc import metrics
from hashsvc.errors import NotFoundError
from hashsvc.matching.matcher import Match
from hashsvc.scanner import ScanResult
from hashsvc.store import Store
from hashsvc.store.flood import DEFAULT_SETTINGS, FloodSettings, Release

DEFAULT_WINDOW = 10_000  # scans


@dataclass
class _EntryState:
    bank: str = ""
    total: int = 0  # matches since this process started
    released_at: int | None = None  # the scan number a release was learned at
    total_at_release: int = 0
    rate_at_release: float = 0.0  # matches per scan in the window when released
    quarantined: bool = False


@dataclass(frozen=True)
class Quarantine:
    """What a new quarantine is reported (audit log, metrics) with: never an image."""

    match: Match
    query_hash: str  # the upload's hash that matched, algorithm:hex
    in_window: int  # the entry's matches in the last `window` scans
    window: int
    expected: float  # what its history predicted for as many scans


class FloodGuard:
    """Thread-safe; one per serving process, shared by its scan threads."""

    def __init__(self, window: int = DEFAULT_WINDOW,
                 on_quarantine: Callable[[Quarantine], None] | None = None) -> None:
        if window < 1:
            raise ValueError("the flood guard's window is at least one scan")
        self.window = window
        self._on_quarantine = on_quarantine
        self._scans = itertools.count(1)  # atomic under the GIL: scans with no match take no lock
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, int]] = deque()  # (scan number, entry id), oldest first
        self._in_window: Counter[int] = Counter()
        self._entries: dict[int, _EntryState] = {}
        self._settings: dict[str, FloodSettings] = {}

    def configure(self, settings: dict[str, FloodSettings]) -> None:
        """Each bank's thresholds (banks not named keep the defaults)."""
        self._settings = dict(settings)

    def screen(self, result: ScanResult, uploads: int = 1) -> ScanResult:
        """Count `uploads` scans (a ScanHashes batch of unrelated lookups stands for several)
        and this result's matches; the matches of quarantined entries come back with
        `quarantined` set (so `result.matched` is false on those alone)."""
        scan = next(self._scans)
        for _ in range(uploads - 1):
            scan = next(self._scans)
        if not result.matches:
            return result
        new: list[Quarantine] = []
        with self._lock:
            self._evict(scan)
            screened = [self._count(scan, match, result, new) for match in result.matches]
        for quarantine in new:  # outside the lock: the callback writes the audit log
            if self._on_quarantine is not None:
                self._on_quarantine(quarantine)
        result.matches = screened
        return result

    def _evict(self, scan: int) -> None:
        """Drop the matches that left the window. An entry with none left in it forgets its
        history too (unless quarantined or released), so memory is bounded by the window's
        matches, not by every entry ever matched. An entry that went a whole window without a
        match predicts about nothing anyway; should it come back flooding, `min_matches` alone
        is its threshold, as for any entry new to this process."""
        oldest = scan - self.window
        recent, counts, entries = self._recent, self._in_window, self._entries
        while recent and recent[0][0] <= oldest:
            _, entry_id = recent.popleft()
            counts[entry_id] -= 1
            if not counts[entry_id]:
                del counts[entry_id]
                state = entries.get(entry_id)
                if state is not None and not state.quarantined and state.released_at is None:
                    del entries[entry_id]

    def _count(self, scan: int, match: Match, result: ScanResult,
               new: list[Quarantine]) -> Match:
        settings = self._settings.get(match.bank, DEFAULT_SETTINGS)
        state = self._entries.get(match.entry_id)
        if state is None:
            state = self._entries[match.entry_id] = _EntryState()
        state.bank = match.bank
        state.total += 1
        self._recent.append((scan, match.entry_id))
        self._in_window[match.entry_id] += 1
        if not state.quarantined and settings.enabled:
            in_window = self._in_window[match.entry_id]
            expected = self._expected(scan, state, in_window)
            if expected is not None and in_window >= max(settings.min_matches,
                                                          settings.factor * expected):
                state.quarantined = True
                hashed = result.hashes[match.hash_index].hash if result.hashes else None
                new.append(Quarantine(
                    match, f"{hashed.algorithm}:{hashed.hex}" if hashed else "",
                    in_window, self.window, expected))
        return replace(match, quarantined=True) if state.quarantined else match

    def _expected(self, scan: int, state: _EntryState, in_window: int) -> float | None:
        """Matches the entry's history predicts for one window; None while it may not be
        quarantined (the window after a release)."""
        if state.released_at is not None:
            since = scan - state.released_at
            if since < self.window:
                return None
            rate = (state.total - state.total_at_release) / since
            return max(rate, state.rate_at_release) * self.window
        before = scan - self.window  # scans before the window, since this process started
        return (state.total - in_window) / before * self.window if before > 0 else 0.0

    def release(self, releases: list[Release]) -> list[int]:
        """Apply analysts' releases; returns the ids whose quarantine this lifted."""
        lifted: list[int] = []
        with self._lock:
            now = next(self._scans)  # a number of its own: the scans after it are after it
            for released in releases:
                state = self._entries.setdefault(released.entry_id, _EntryState())
                if state.quarantined:
                    lifted.append(released.entry_id)
                state.quarantined = False
                state.released_at = now
                state.total_at_release = state.total
                state.rate_at_release = self._in_window[released.entry_id] / self.window
        return lifted

    def forget(self, entry_ids: list[int]) -> None:
        """Entries no longer served (disabled, removed, their bank disabled): their quarantine
        ends; if they come back they start afresh."""
        with self._lock:
            for entry_id in entry_ids:
                self._entries.pop(entry_id, None)

    def quarantined(self) -> dict[int, str]:
        """The entries quarantined now, with their banks."""
        with self._lock:
            return {entry_id: state.bank for entry_id, state in self._entries.items()
                    if state.quarantined}


class StoreFollower:
    """Keeps a process's guard in step with the store: each bank's thresholds, the analysts'
    releases, and the entries no longer served (disabled or removed: their quarantine ends).
    Called on every watcher pass; reads the store only when its revision has moved."""

    def __init__(self, guard: FloodGuard, store: Store,
                 on_release: Callable[[Release], None] | None = None) -> None:
        self._guard = guard
        self._store = store
        self._on_release = on_release
        self._revision = -1  # nothing read yet: the first pass reads every release
        self._banks: set[str] = set()
        self._lock = threading.RLock()  # the watcher, admin calls and scans (export) share it

    def __call__(self) -> None:
        with self._lock:
            self._follow()

    def _follow(self) -> None:
        revision = self._store.revision()
        if revision == self._revision:
            return
        guard, store = self._guard, self._store
        guard.configure(store.flood_guard_settings())
        # Only up to the revision read: a later release is read on the pass that sees it.
        releases = [r for r in store.flood_releases(max(self._revision, 0))
                    if r.revision <= revision]
        lifted = set(guard.release(releases))
        if self._on_release is not None:
            for released in releases:
                if released.entry_id in lifted:
                    self._on_release(released)
        guard.forget(self._not_served(guard.quarantined()))
        self._revision = revision
        self.export()

    def _not_served(self, quarantined: dict[int, str]) -> list[int]:
        if not quarantined:
            return []
        enabled = {bank.name for bank in self._store.list_banks() if bank.enabled}
        gone: list[int] = []
        for entry_id in quarantined:
            try:
                entry = self._store.get_entry(entry_id)
            except NotFoundError:
                gone.append(entry_id)
                continue
            if entry.disabled or entry.bank not in enabled:
                gone.append(entry_id)
        return gone

    def export(self) -> None:
        """The quarantined-entries gauge, by bank (a bank with none left reads 0)."""
        with self._lock:
            self._export()

    def _export(self) -> None:
        counts = Counter(self._guard.quarantined().values())
        for bank in self._banks - set(counts):
            metrics.FLOOD_QUARANTINED_ENTRIES.labels(bank).set(0)
        for bank, count in counts.items():
            metrics.FLOOD_QUARANTINED_ENTRIES.labels(bank).set(count)
        self._banks |= set(counts)
