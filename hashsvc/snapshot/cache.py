"""A replica's local cache of snapshots fetched from a repository, content-addressed like it.

Layout of the cache directory:

    objects/<sha256>              one file per distinct content, verified before it got its name
    versions/<version>/           hard links to the objects under the snapshot's file names, plus
                                  manifest.json: a directory `loading.load` reads as it reads any
                                  snapshot, memory-mapped

An object is downloaded to a temporary name, its size and sha256 checked, fsync'd and only then
renamed to its sha256, so a name in `objects/` always means "verified content": a replica killed
mid-download leaves a temporary file, never a wrong object. A version directory is assembled under
a temporary name and renamed whole. Objects the cache already holds are never downloaded again,
which is what makes a republish with a small change cheap.

Several worker processes of one server share a cache. Installing (and loading from) a version
holds a shared lock; pruning takes the exclusive lock, and skips its turn rather than wait, so it
never deletes a file another worker is about to link or open. An object no version links any more
(`st_nlink == 1`) is garbage. A snapshot already loaded is memory-mapped: deleting its files does
not disturb it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hashsvc.errors import SnapshotFetchError
from hashsvc.snapshot.loading import sha256_file
from hashsvc.snapshot.model import MANIFEST

_TMP_PREFIX = ".tmp-"

# Writes the object named by its sha256 into the open file; raises RepositoryUnavailableError
# when the repository cannot be reached, SnapshotFetchError("missing") when it lacks the object.
Download = Callable[[str, IO[bytes]], None]


@dataclass
class FetchStats:
    """What one fetch moved: the measure of how much a small change costs a replica."""

    downloaded_objects: int = 0
    downloaded_bytes: int = 0
    reused_objects: int = 0
    reused_bytes: int = 0


class SnapshotCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.versions = root / "versions"

    def version_dir(self, version: str) -> Path | None:
        """The installed directory of `version`, if the cache holds it complete."""
        directory = self.versions / version
        return directory if (directory / MANIFEST).is_file() else None

    def newest(self) -> str | None:
        """The newest complete version in the cache (versions sort by creation time)."""
        if not self.versions.is_dir():
            return None
        return max((p.name for p in self.versions.iterdir()
                    if not p.name.startswith(".") and (p / MANIFEST).is_file()), default=None)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Held while installing or loading a version, so that no prune removes it meanwhile."""
        with self._lock(fcntl.LOCK_SH):
            yield

    def install(self, version: str, manifest_text: bytes, manifest: dict[str, Any],
                download: Download) -> tuple[Path, FetchStats]:
        """Make `version` a loadable directory, downloading only objects the cache lacks.

        Call inside `shared()`. Every object downloaded is checked against the manifest's size
        and sha256 before it is kept; the loader checks every file again when it loads."""
        stats = FetchStats()
        files: dict[str, dict[str, Any]] = manifest["files"]
        for name, entry in files.items():
            digest, size = str(entry["sha256"]), int(entry["bytes"])
            if (self.objects / digest).is_file():
                stats.reused_objects += 1
                stats.reused_bytes += size
                continue
            self._download(version, name, digest, size, download)
            stats.downloaded_objects += 1
            stats.downloaded_bytes += size
        existing = self.version_dir(version)
        if existing is not None:
            if (existing / MANIFEST).read_bytes() == manifest_text:
                return existing, stats
            shutil.rmtree(existing, ignore_errors=True)  # a stale copy under a reused name
        staging = self.versions / f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        for name, entry in files.items():
            os.link(self.objects / str(entry["sha256"]), staging / name)
        _write_durably(staging / MANIFEST, manifest_text)
        _fsync_dir(staging)
        final = self.versions / version
        try:
            staging.rename(final)
        except OSError:  # another worker installed it meanwhile (and may be loading it): keep it
            shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(self.versions)
        return final, stats

    def adopt(self, version: str, directory: Path, manifest: dict[str, Any]) -> Path:
        """Take a snapshot the publisher just built and uploaded into the cache by renaming its
        files, so the publishing process never downloads what it has just written."""
        self.objects.mkdir(parents=True, exist_ok=True)
        for name, entry in manifest["files"].items():
            target = self.objects / str(entry["sha256"])
            if not target.exists():
                os.link(directory / name, target)
        self.versions.mkdir(parents=True, exist_ok=True)
        final = self.versions / version
        shutil.rmtree(final, ignore_errors=True)
        directory.rename(final)
        _fsync_dir(self.versions)
        return final

    def prune(self, keep: set[str]) -> None:
        """Delete versions not in `keep`, then objects no version links; skipped (not waited
        for) while another process installs or loads."""
        if not self.versions.is_dir():
            return
        try:
            with self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB):
                for path in self.versions.iterdir():
                    if path.name not in keep:
                        shutil.rmtree(path, ignore_errors=True)
                for path in self.objects.iterdir() if self.objects.is_dir() else ():
                    if path.name.startswith(_TMP_PREFIX) or path.stat().st_nlink <= 1:
                        path.unlink(missing_ok=True)
        except BlockingIOError:
            return

    def _download(self, version: str, name: str, digest: str, size: int,
                  download: Download) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        temporary = self.objects / f"{_TMP_PREFIX}{digest}-{uuid.uuid4().hex[:8]}"
        try:
            with temporary.open("wb") as handle:
                download(digest, handle)
                handle.flush()
                os.fsync(handle.fileno())
            got = temporary.stat().st_size
            if got != size:
                raise SnapshotFetchError(
                    f"snapshot {version}: object {digest[:12]}… ({name}) holds {got} bytes, the "
                    f"manifest says {size}: partial, refusing to load", "partial")
            actual = sha256_file(temporary)
            if actual != digest:
                raise SnapshotFetchError(
                    f"snapshot {version}: object {digest[:12]}… ({name}) has sha256 "
                    f"{actual[:12]}…: corrupt, refusing to load", "corrupt")
            temporary.rename(self.objects / digest)
        finally:
            temporary.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, mode)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
