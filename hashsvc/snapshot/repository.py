"""Where snapshots are published and where replicas find them: a snapshot repository.

Two implementations speak the same small interface: `LocalRepository`, a directory laid out as
it always was (`<home>/snapshots/<version>/` and the `current` file; the embedded default), and
`S3Repository` (s3.py), an S3-compatible bucket. Publishing builds a snapshot in a local staging
directory and `commit`s it; a server reads the pointer (`current_version`), `checkout`s that
version into a directory it can memory-map, and loads it with `loading.load`, which verifies it
whichever repository it came from.

A local directory is read on every watcher pass, as before. A bucket is polled every
`poll_interval` seconds, jittered by the caller so a fleet of replicas does not read it in step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hashsvc.errors import HashsvcError
from hashsvc.snapshot.cache import FetchStats
from hashsvc.snapshot.loading import current_version, list_versions, version_dir
from hashsvc.snapshot.manifest import read_manifest
from hashsvc.snapshot.model import CURRENT, MANIFEST
from hashsvc.store.base import redact

TMP_PREFIX = ".tmp-"
_TOMBSTONE_PREFIX = ".deleting-"
VERSION_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z-r\d+")  # what publishing's _new_version makes


@dataclass
class TransferStats:
    """What one publish uploaded; a local directory uploads nothing."""

    uploaded_objects: int = 0
    uploaded_bytes: int = 0
    skipped_objects: int = 0  # already in the repository: content addressing at work


class SnapshotRepository(Protocol):
    location: str  # for logs and errors: never holds a credential
    poll_interval: float  # seconds between pointer reads on a replica; 0: every watcher pass

    def current_version(self) -> str | None:
        """The version the pointer names (None: nothing published yet)."""
        ...

    def read_manifest(self, version: str) -> dict[str, Any]:
        """The checked manifest of a published `version`."""
        ...

    def publishing(self) -> contextlib.AbstractContextManager[Path]:
        """Held for a whole publish: the local directory to build the new snapshot in."""
        ...

    def commit(self, staged: Path, version: str, manifest: dict[str, Any]
               ) -> tuple[Path, TransferStats]:
        """Make the snapshot built in `staged` the current one: every file, then the manifest,
        then the pointer. Returns where it now is locally."""
        ...

    def collect_garbage(self, keep: int) -> None:
        """Remove old versions: never the pointer's, nor the newest `keep`, nor a file they use."""
        ...

    def checkout(self, version: str) -> contextlib.AbstractContextManager[
            tuple[Path, FetchStats]]:
        """A local directory holding `version`, for `loading.load`; valid while held."""
        ...

    def retain(self, versions: set[str]) -> None:
        """Forget local copies of versions other than these (a replica's cache)."""
        ...

    def fallback(self) -> str | None:
        """The newest version this node can load without reaching the repository (from its
        cache), for a replica that starts while its bucket is unreachable."""
        ...


def open_repository(location: str | Path, *, cache_dir: Path, endpoint_url: str | None = None,
                    poll_interval: float = 5.0) -> SnapshotRepository:
    """The repository `location` names: `s3://bucket/prefix`, or a directory."""
    text = str(location)
    if text.startswith("s3://"):
        from hashsvc.snapshot.s3 import S3Repository

        return S3Repository(text, cache_dir=cache_dir, endpoint_url=endpoint_url,
                            poll_interval=poll_interval)
    if "://" in text:
        raise HashsvcError(f"snapshot repository {redact(text)}: only a directory or "
                           f"s3://bucket/prefix is supported")
    return LocalRepository(Path(text))


class LocalRepository:
    """Today's layout, unchanged: version directories beside a `current` file naming one.

    Everything is written to a temporary directory, fsync'd and renamed, and only then is
    `current` replaced by an atomic rename, so a reader never sees half a snapshot and a crash
    at any point leaves the previous one in force."""

    poll_interval = 0.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def current_version(self) -> str | None:
        return current_version(self.root)

    def read_manifest(self, version: str) -> dict[str, Any]:
        return read_manifest(version_dir(self.root, version))

    @contextlib.contextmanager
    def publishing(self) -> Iterator[Path]:
        """An exclusive lock against other publishers, and a sweep of what a killed one left."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".publish.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._sweep_leftovers()
                yield self.root
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def commit(self, staged: Path, version: str, manifest: dict[str, Any]
               ) -> tuple[Path, TransferStats]:
        final = self.root / version
        staged.rename(final)
        fsync_dir(self.root)
        pending = self.root / f"{CURRENT}.pending"
        with pending.open("w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        pending.replace(self.root / CURRENT)
        fsync_dir(self.root)
        return final, TransferStats()

    @contextlib.contextmanager
    def checkout(self, version: str) -> Iterator[tuple[Path, FetchStats]]:
        yield version_dir(self.root, version), FetchStats()

    def retain(self, versions: set[str]) -> None:
        return  # the directory is the repository itself: the publisher prunes it

    def fallback(self) -> str | None:
        return None  # a local directory is never unreachable: there is nothing to fall back on

    def _sweep_leftovers(self) -> None:
        """Remove what a killed publisher leaves behind; safe under the publish lock.

        That is: half-written `.tmp-*` snapshots, `.deleting-*` tombstones of versions it was
        removing, and version directories without a manifest (a removal killed part-way before
        removals went through a tombstone). None of them can be loaded, and nothing else would
        ever delete them. The version `current` names is never touched, whatever state it is in.
        """
        current = current_version(self.root)
        for path in self.root.iterdir():
            if path.name == current or path.is_symlink() or not path.is_dir():
                continue
            if (path.name.startswith((TMP_PREFIX, _TOMBSTONE_PREFIX))
                    or (VERSION_NAME.fullmatch(path.name) and not (path / MANIFEST).exists())):
                shutil.rmtree(path, ignore_errors=True)

    def collect_garbage(self, keep: int) -> None:
        """Keep the newest `keep` versions (a server may still be loading the previous one).
        Only versions a publisher named are counted and pruned: a directory copied in by hand
        is the operator's.

        Each version is first renamed to a `.deleting-*` tombstone, atomically, and only then
        deleted: a publisher killed during the deletion leaves a tombstone that the next one
        sweeps, never a half-deleted directory that still looks like a version.
        """
        current = current_version(self.root)
        published = [v for v in list_versions(self.root) if VERSION_NAME.fullmatch(v)]
        doomed = [v for v in sorted(published, reverse=True)[keep:] if v != current]
        tombstones = []
        for version in doomed:
            tombstone = self.root / f"{_TOMBSTONE_PREFIX}{version}"
            with contextlib.suppress(OSError):  # left for the next publish to retry
                (self.root / version).rename(tombstone)
                tombstones.append(tombstone)
        if tombstones:
            fsync_dir(self.root)
        for tombstone in tombstones:
            shutil.rmtree(tombstone, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
