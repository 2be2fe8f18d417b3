"""The keys file as the server holds it: re-read when it changes, and kept when it breaks.

Kept apart from interceptors.py (which authenticates each call against it) because it is a
job of its own: when to re-read, what to keep when a reload fails, and what to tell the
operator. Logged on the "hashsvc.rpc" logger, as the calls it serves are.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hashsvc import metrics
from hashsvc.errors import HashsvcError
from hashsvc.keys import KeyRing
from hashsvc.server.keyfile import file_signature, load_keys

log = logging.getLogger("hashsvc.rpc")


class KeyFile:
    """The keys file, re-read when it changes (checked at most once a second), so keys can be
    added or revoked without a restart.

    A file that does not load (a typo mid-edit, a half-copied file) must not turn every call
    into UNKNOWN: the last good keys keep serving, the error is logged once per change of the
    file (it names the file and the line, never key material: the file holds only hashes), and
    `hashsvc_keys_file_valid` drops to 0 so an alert fires. At start-up there are no good keys
    to keep, so the error is raised (serve refuses to start).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._ring = load_keys(path)
        self._signature = file_signature(path)
        metrics.KEYS_FILE_VALID.set(1)
        log.info("loaded API keys", extra={"keys": len(self._ring), "file": str(path)})

    def refresh(self) -> KeyRing:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._ring
        with self._lock:
            self._checked = now
            signature = file_signature(self.path)
            if signature == self._signature:
                return self._ring
            self._signature = signature  # tried once per change, whatever the outcome
            try:
                self._ring = load_keys(self.path)
            except HashsvcError as err:
                metrics.KEYS_RELOAD_FAILURES.inc()
                metrics.KEYS_FILE_VALID.set(0)
                log.error("keys file not loaded; the previous keys stay in effect",
                          extra={"file": str(self.path), "error": err.message,
                                 "keys": len(self._ring)})
            else:
                metrics.KEYS_FILE_VALID.set(1)
                log.info("loaded API keys", extra={"keys": len(self._ring),
                                                   "file": str(self.path)})
        return self._ring
