"""The audit trail: one JSON line per scan that matched (optionally per scan), for investigators.

Each record holds the time, request id, caller (the API key's *name*), method, the snapshot
version, the hashes computed and every match (bank, entry id, external id, algorithm, distance,
threshold, how it matched: transform, trimmed, entry variant, which hash; status: matched or
quarantined); AdminService.ListRecentMatches reads them back (audit_tail.py). The flood guard's
quarantines and the releases that lift them are records of their own. Never image bytes, never
a key.

Safe under concurrency and rotation without a lock shared between processes:
- the file is opened with O_APPEND and each record is written by a single `write()`, so records
  from many threads and worker processes never interleave (Linux appends atomically per write);
- before each write the path is `stat`ed; if logrotate moved it away (`create` mode), the file is
  reopened, so nothing is written to the rotated file after the move (`copytruncate` also works:
  O_APPEND follows the truncation).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: the indexer's verbs write audit records without a matcher
    from hashsvc.matching.matcher import Match
    from hashsvc.scanner import ScanResult


class AuditLog:
    def __init__(self, path: Path, *, all_scans: bool = False) -> None:
        self.path = path
        self.all_scans = all_scans
        self._lock = threading.Lock()
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        info = os.fstat(self._fd)
        self._identity = (info.st_dev, info.st_ino)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self._lock:
            try:
                info = self.path.stat()
                current: tuple[int, int] | None = (info.st_dev, info.st_ino)
            except FileNotFoundError:
                current = None
            if self._fd < 0 or current != self._identity:
                self._open()
            os.write(self._fd, line)

    def scan(
        self, *, method: str, request_id: str, caller: str, result: ScanResult,
        protocol: str = "grpc",
    ) -> None:
        """`protocol` "http": the scan came through the HTTP/JSON API, and the record says so
        (records of gRPC scans are unchanged)."""
        if not (result.matches or self.all_scans):  # quarantined matches are audited too
            return
        over = {"protocol": protocol} if protocol != "grpc" else {}
        self.write({
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "event": "scan",
            "method": method,
            "request_id": request_id,
            "caller": caller,
            "matched": result.matched,
            "snapshot_version": result.snapshot_version,
            "hashes": {c.hash.algorithm: c.hash.hex for c in result.hashes},
            "matches": _matches(result.matches),
            "suppressed_by_allowlist": _matches(result.suppressed),
            **over,
        })

    def event(self, event: str, *, caller: str, **fields: Any) -> None:
        """An investigator-relevant admin act (an analyst's verdict on a match): the same
        line format as a scan's record, ids and hashes only."""
        self.write({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "event": event, "caller": caller, **fields})

    def flood(self, event: str, **fields: Any) -> None:
        """A flood-guard event (`flood_quarantine`, `flood_release`): ids, hashes and counts,
        never an image."""
        self.write({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                    "event": event, **fields})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _matches(matches: Sequence[Match]) -> list[dict[str, Any]]:
    return [
        {"bank": m.bank, "entry_id": m.entry_id, "external_id": m.external_id,
         "algorithm": m.algorithm, "distance": m.distance, "threshold": m.threshold,
         "query_transform": m.query_transform, "query_trimmed": m.query_trimmed,
         "entry_variant": m.entry_variant, "hash_index": m.hash_index,
         "status": "quarantined" if m.quarantined else "matched"}
        for m in matches
    ]
