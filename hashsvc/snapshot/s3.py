"""A snapshot repository in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS's S3 interface).

Layout under `s3://bucket/prefix/`:

    objects/<sha256>              every snapshot file, named by its content
    manifests/<version>.json      the manifest: each file's name, sha256 and size
    current                       the pointer: one line naming the current version

Publishing uploads only the objects the bucket lacks, then the manifest, then the pointer: a
reader that sees a pointer finds its manifest, and a manifest's objects, already there. A
replica downloads only the objects its cache (cache.py) lacks, checks each against the manifest,
and loads the version from the cache like any local snapshot.

Credentials come from boto3's standard chain (environment, shared config, instance roles) and
never pass through hashsvc: no message here holds one, and URLs are redacted. Errors reaching the
bucket become `RepositoryUnavailableError` (try again later); a version whose manifest or objects
are missing or wrong becomes `SnapshotFetchError` (refused until the pointer moves).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

from hashsvc.errors import (
    HashsvcError,
    RepositoryUnavailableError,
    SnapshotError,
    SnapshotFetchError,
)
from hashsvc.snapshot.cache import FetchStats, SnapshotCache
from hashsvc.snapshot.manifest import parse_manifest
from hashsvc.snapshot.model import MANIFEST
from hashsvc.snapshot.repository import VERSION_NAME, TransferStats
from hashsvc.store.base import redact

try:
    import boto3
    import boto3.exceptions
    import botocore.config
    import botocore.exceptions
    import urllib3.exceptions

    HAVE_BOTO3 = True
except ImportError:  # pragma: no cover - the `s3` extra is not installed
    HAVE_BOTO3 = False

T = TypeVar("T")
POINTER = "current"
ORPHAN_GRACE = dt.timedelta(hours=1)  # an unreferenced object younger than this may be in use
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class _Missing(Exception):
    """The key does not exist (as opposed to the bucket being unreachable)."""


class S3Repository:
    def __init__(self, url: str, *, cache_dir: Path, endpoint_url: str | None = None,
                 poll_interval: float = 5.0, orphan_grace: dt.timedelta = ORPHAN_GRACE) -> None:
        if not HAVE_BOTO3:
            raise HashsvcError(f"snapshot repository {redact(url)}: s3:// needs boto3 "
                               f"(pip install 'hashsvc[s3]')")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket or "@" in bucket:
            raise HashsvcError(f"snapshot repository {redact(url)}: expected s3://bucket/prefix "
                               f"(credentials come from the AWS environment, not the URL)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}"
        self.poll_interval = poll_interval
        self.orphan_grace = orphan_grace
        self.cache = SnapshotCache(cache_dir)
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None,
            config=botocore.config.Config(connect_timeout=5, read_timeout=30,
                                          retries={"max_attempts": 3, "mode": "standard"}))

    # ---- reading ---------------------------------------------------------------------------

    def current_version(self) -> str | None:
        try:
            text = self._call("read the pointer", self._get, POINTER)
        except _Missing:
            return None
        # Checked by `checkout`, so that a pointer naming nonsense is refused like a bad version.
        return text.decode("utf-8", "replace").strip() or None

    def read_manifest(self, version: str) -> dict[str, Any]:
        return self._manifest(version)[1]

    @contextlib.contextmanager
    def checkout(self, version: str) -> Iterator[tuple[Path, FetchStats]]:
        """The version in the local cache, downloading only the objects the cache lacks."""
        _check_version(version, f"{self.location}/{POINTER}")
        with self.cache.shared():
            cached = self.cache.version_dir(version)
            if cached is not None:
                yield cached, FetchStats()
                return
            text, manifest = self._manifest(version)
            yield self.cache.install(version, text, manifest, self._download)

    def retain(self, versions: set[str]) -> None:
        self.cache.prune(versions)

    def fallback(self) -> str | None:
        return self.cache.newest()

    # ---- publishing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def publishing(self) -> Iterator[Path]:
        """A staging directory in the cache, under a lock against publishers on this machine.
        (Publishers on different machines are kept apart by the store's single-writer lock.)"""
        staging = self.cache.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        with (self.cache.root / ".publish.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                for leftover in staging.iterdir():  # a killed publisher's half-built snapshot
                    shutil.rmtree(leftover, ignore_errors=True)
                yield staging
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def commit(self, staged: Path, version: str, manifest: dict[str, Any]
               ) -> tuple[Path, TransferStats]:
        """Objects the bucket lacks, then the manifest, then the pointer: in that order only."""
        stats = TransferStats()
        present = {key.rsplit("/", 1)[-1]: size for key, size, _ in self._list("objects/")}
        for name, entry in manifest["files"].items():
            digest, size = str(entry["sha256"]), int(entry["bytes"])
            if present.get(digest) == size:
                stats.skipped_objects += 1
                continue
            self._call(f"upload {name}", self._client.upload_file, str(staged / name),
                       self.bucket, self._key(f"objects/{digest}"))
            present[digest] = size
            stats.uploaded_objects += 1
            stats.uploaded_bytes += size
        self._put(f"manifests/{version}.json", (staged / MANIFEST).read_bytes())
        self._put(POINTER, f"{version}\n".encode())
        with self.cache.shared():
            return self.cache.adopt(version, staged, manifest), stats

    def collect_garbage(self, keep: int) -> None:
        """Delete old manifests, then the objects no remaining manifest names.

        Kept: the pointer's version, the newest `keep` published versions, every object one of
        them names, and any unreferenced object younger than `orphan_grace` (a publisher may be
        uploading it). If a kept manifest cannot be read, no object is deleted at all."""
        current = self.current_version()
        versions = sorted((key.rsplit("/", 1)[-1].removesuffix(".json")
                           for key, _, _ in self._list("manifests/")), reverse=True)
        published = [v for v in versions if VERSION_NAME.fullmatch(v)]
        doomed = {v for v in published[keep:] if v != current}
        for version in doomed:
            self._call("delete an old manifest", self._client.delete_object,
                       Bucket=self.bucket, Key=self._key(f"manifests/{version}.json"))
        used: set[str] = set()
        for version in versions:
            if version in doomed:
                continue
            try:
                files = self.read_manifest(version)["files"]
            except SnapshotError:
                return  # cannot tell what it uses: delete nothing rather than guess
            used.update(str(entry["sha256"]) for entry in files.values())
        young = dt.datetime.now(dt.UTC) - self.orphan_grace
        for key, _, modified in self._list("objects/"):
            if key.rsplit("/", 1)[-1] not in used and modified < young:
                self._call("delete an unused object", self._client.delete_object,
                           Bucket=self.bucket, Key=key)
        self.cache.prune(set(versions) - doomed)  # the publisher's own copies, likewise

    # ---- the bucket ------------------------------------------------------------------------

    def _manifest(self, version: str) -> tuple[bytes, dict[str, Any]]:
        where = f"snapshot {version}: {self.location}/manifests/{version}.json"
        try:
            text = self._call("read a manifest", self._get, f"manifests/{version}.json")
        except _Missing:
            raise SnapshotFetchError(f"{where} is missing: refusing to load", "missing") from None
        try:
            return text, parse_manifest(text, where)
        except SnapshotError as err:
            raise SnapshotFetchError(err.message, "invalid") from None

    def _download(self, digest: str, handle: IO[bytes]) -> None:
        def copy() -> None:
            body = self._client.get_object(Bucket=self.bucket,
                                           Key=self._key(f"objects/{digest}"))["Body"]
            shutil.copyfileobj(body, handle, 1 << 20)
        try:
            self._call(f"download object {digest[:12]}…", copy)
        except _Missing:
            raise SnapshotFetchError(
                f"{self.location}/objects/{digest[:12]}… is missing from the bucket, though a "
                f"manifest names it: refusing to load", "missing") from None

    def _get(self, name: str) -> bytes:
        body: bytes = self._client.get_object(Bucket=self.bucket, Key=self._key(name))[
            "Body"].read()
        return body

    def _put(self, name: str, data: bytes) -> None:
        self._call(f"write {name}", self._client.put_object, Bucket=self.bucket,
                   Key=self._key(name), Body=data)

    def _list(self, under: str) -> Iterator[tuple[str, int, dt.datetime]]:
        pages = self._call(f"list {under}", lambda: list(
            self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(under))))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"], int(item["Size"]), item["LastModified"]

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function`, with the client's failures turned into one-line errors naming the
        bucket (never a credential: botocore's messages hold none, and URLs are redacted)."""
        try:
            return function(*args, **kwargs)
        except botocore.exceptions.ClientError as err:
            error = err.response.get("Error", {})
            if str(error.get("Code")) in _MISSING:
                raise _Missing from None
            self._unavailable(what, f"{error.get('Code')}: {error.get('Message', '')}")
        except (botocore.exceptions.BotoCoreError, boto3.exceptions.S3UploadFailedError,
                urllib3.exceptions.HTTPError) as err:
            self._unavailable(what, f"{type(err).__name__}: {err}")

    def _unavailable(self, what: str, problem: str) -> NoReturn:
        raise RepositoryUnavailableError(
            f"snapshot repository {self.location}: cannot {what}: {redact(problem)[:300]}")


def _check_version(version: str, where: str) -> None:
    """A version names one manifest: nothing that could point elsewhere in the bucket."""
    if "/" in version or version.startswith(".") or "\0" in version or len(version) > 200:
        raise SnapshotFetchError(f"{where} names {version[:80]!r}, which is not a snapshot "
                                 f"version", "invalid")
