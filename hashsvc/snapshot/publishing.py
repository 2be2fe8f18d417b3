"""Building a snapshot of the store and making it current, safely against crashes and rivals.

Everything is written to a temporary directory, fsync'd and renamed, and only then is
`snapshots/current` (a one-line file naming the version) replaced by an atomic rename, so a reader
never sees half a snapshot and a crash at any point leaves the previous one in force.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from hashsvc import __version__
from hashsvc.errors import SnapshotError
from hashsvc.hashing.algorithms import ALGORITHMS, get_algorithm
from hashsvc.matching.mih import CODE_BITS as MIH_BITS
from hashsvc.matching.mih import MultiIndexHash
from hashsvc.snapshot.loading import current_version, list_versions, sha256_file, version_dir
from hashsvc.snapshot.manifest import read_manifest
from hashsvc.snapshot.model import CURRENT, FORMAT_VERSION, MANIFEST, PublishResult, StringTable
from hashsvc.store import Store

_TMP_PREFIX = ".tmp-"
_TOMBSTONE_PREFIX = ".deleting-"
_VERSION_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z-r\d+")  # what _new_version makes


def publish(
    store: Store, snapshots_dir: Path, *, force: bool = False, keep: int = 3,
    lock_wait: float = 0.0,
) -> PublishResult:
    """Build a snapshot of `store` and make it current, unless nothing changed (or `force`).

    Safe against concurrent publishers (the store's single-writer lock, which with PostgreSQL
    spans machines and fails at once naming its holder; then an exclusive lock on the directory)
    and against a crash at any instant (temporary directory, fsync, rename; `current` switched
    last). `lock_wait`: seconds to wait for another publisher to finish before failing.
    """
    started = time.perf_counter()
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    with store.writer_lock("publish", wait=lock_wait), _publish_lock(snapshots_dir):
        _sweep_leftovers(snapshots_dir)
        revision = store.revision()
        current = current_version(snapshots_dir)
        if current is not None and not force:
            # A `current` that cannot be read is replaced, not kept: publishing is the way out.
            with contextlib.suppress(SnapshotError):
                path = version_dir(snapshots_dir, current)
                manifest = read_manifest(path)
                if manifest["store_revision"] == revision:
                    return PublishResult(current, False, path, manifest,
                                         time.perf_counter() - started)
        version = _new_version(revision)
        temporary = snapshots_dir / f"{_TMP_PREFIX}{version}"
        temporary.mkdir()
        manifest = _write_snapshot(store, temporary, version, revision)
        _fsync_dir(temporary)
        final = snapshots_dir / version
        temporary.rename(final)
        _fsync_dir(snapshots_dir)
        _switch_current(snapshots_dir, version)
        _remove_old_versions(snapshots_dir, keep=max(keep, 2))
    return PublishResult(version, True, final, manifest, time.perf_counter() - started)


def _write_snapshot(store: Store, directory: Path, version: str, revision: int) -> dict[str, Any]:
    banks = [b for b in store.list_banks() if b.enabled]
    bank_index = {bank.id: i for i, bank in enumerate(banks)}

    entry_ids: list[int] = []
    entry_banks: list[int] = []
    external_ids: list[str | None] = []
    metadata: list[str | None] = []
    variant_codes: dict[str, int] = {"": 0}
    variants: list[int] = []
    hashes: dict[str, list[bytes]] = {name: [] for name in ALGORITHMS}
    hash_rows: dict[str, list[int]] = {name: [] for name in ALGORITHMS}
    by_bank: dict[str, dict[str, int]] = {}
    for batch in store.iter_active_entries():
        for entry_id, bank_id, algorithm, value, external_id, meta, variant in batch:
            row = len(entry_ids)
            variants.append(variant_codes.setdefault(variant, len(variant_codes)))
            entry_ids.append(entry_id)
            entry_banks.append(bank_index[bank_id])
            external_ids.append(external_id)
            metadata.append(meta)
            hashes[algorithm].append(value)
            hash_rows[algorithm].append(row)
            counts = by_bank.setdefault(banks[bank_index[bank_id]].name, {})
            counts[algorithm] = counts.get(algorithm, 0) + 1

    writer = _FileWriter(directory)
    writer.json("banks.json", [
        {"name": b.name, "kind": b.kind, "tags": list(b.tags), "thresholds": b.thresholds,
         "description": b.description, "strategies": json.loads(b.strategies.to_json())}
        for b in banks
    ])
    writer.array("entries.ids.npy", np.asarray(entry_ids, dtype=np.int64))
    writer.array("entries.banks.npy", np.asarray(entry_banks, dtype=np.int32))
    if len(variant_codes) > 1:
        writer.array("entries.variants.npy", np.asarray(variants, dtype=np.uint8))
    for name, strings in (("external_ids", external_ids), ("metadata", metadata)):
        blob, offsets = StringTable.encode(strings)
        writer.array(f"entries.{name}.bin.npy", blob)
        writer.array(f"entries.{name}.offsets.npy", offsets)

    by_algorithm: dict[str, int] = {}
    for name, values in hashes.items():
        if not values:
            continue
        by_algorithm[name] = len(values)
        _write_table(writer, name, values, np.asarray(hash_rows[name], dtype=np.int64))

    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "store_revision": revision,
        "hashsvc_version": __version__,
        "counts": {"entries": len(entry_ids), "by_algorithm": by_algorithm, "by_bank": by_bank},
        "variants": list(variant_codes),
        "files": writer.files,
    }
    writer.json(MANIFEST, manifest, record=False)
    return manifest


def _write_table(
    writer: _FileWriter, algorithm: str, values: list[bytes], rows: npt.NDArray[np.int64]
) -> None:
    kind = get_algorithm(algorithm)
    width = kind.bits // 8
    # Fixed-width byte strings sort and compare like the hashes themselves, with no Python loop.
    packed = np.frombuffer(b"".join(values), dtype=f"S{width}")
    # One stable sort groups the rows by hash, in row order within a group: it gives the
    # distinct hashes, their postings and the order at once (np.unique's inverse plus a second
    # argsort cost a third more).
    order = np.argsort(packed, kind="stable")
    ordered = packed[order]
    first = np.empty(len(ordered), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    distinct = ordered[starts]
    offsets = np.append(starts, len(ordered)).astype(np.int64)
    writer.array(f"{algorithm}.postings.offsets.npy", offsets)
    writer.array(f"{algorithm}.postings.rows.npy", rows[order])
    if kind.exact:
        writer.array(f"{algorithm}.codes.npy", distinct)
    elif kind.bits == MIH_BITS:  # PDQ: exact multi-index hashing, sub-millisecond at 10M
        mih = MultiIndexHash(np.frombuffer(distinct.tobytes(), dtype=np.uint8).reshape(-1, width))
        for name, array in mih.arrays().items():
            writer.array(f"{algorithm}.mih.{name}.npy", array)
    else:  # 64-bit pHash/dHash: FAISS brute force is fast enough for their list sizes
        index = faiss.IndexBinaryFlat(kind.bits)
        index.add(np.frombuffer(distinct.tobytes(), dtype=np.uint8).reshape(-1, width))
        writer.faiss(f"{algorithm}.faiss", index)


class _FileWriter:
    """Writes snapshot files durably and records their checksums for the manifest.

    Checksums are computed on a background thread while the next file is being built
    (hashlib releases the GIL); `files` waits for them.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="snapshot-sha256")
        self._digests: dict[str, Future[str]] = {}

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        files = {name: {"sha256": digest.result(), "bytes": (self.directory / name).stat().st_size}
                 for name, digest in self._digests.items()}
        self._pool.shutdown()
        return files

    def array(self, name: str, array: npt.NDArray[Any]) -> None:
        with (self.directory / name).open("wb") as handle:
            np.save(handle, array, allow_pickle=False)
        self._seal(name)

    def json(self, name: str, value: Any, *, record: bool = True) -> None:
        (self.directory / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
        self._seal(name, record=record)

    def faiss(self, name: str, index: Any) -> None:
        faiss.write_index_binary(index, str(self.directory / name))
        self._seal(name)

    def _seal(self, name: str, *, record: bool = True) -> None:
        path = self.directory / name
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if record:
            self._digests[name] = self._pool.submit(sha256_file, path)


# ---- publishing helpers ---------------------------------------------------------------------


@contextlib.contextmanager
def _publish_lock(snapshots_dir: Path) -> Iterator[None]:
    with (snapshots_dir / ".publish.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _new_version(revision: int) -> str:
    """Versions sort by creation time and say which store revision they hold."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-r{revision}"


def _switch_current(snapshots_dir: Path, version: str) -> None:
    pending = snapshots_dir / f"{CURRENT}.pending"
    with pending.open("w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    pending.replace(snapshots_dir / CURRENT)
    _fsync_dir(snapshots_dir)


def _sweep_leftovers(snapshots_dir: Path) -> None:
    """Remove what a killed publisher leaves behind; safe under the publish lock.

    That is: half-written `.tmp-*` snapshots, `.deleting-*` tombstones of versions it was
    removing, and version directories without a manifest (a removal killed part-way before
    removals went through a tombstone). None of them can be loaded, and nothing else would ever
    delete them. The version `current` names is never touched, whatever state it is in.
    """
    current = current_version(snapshots_dir)
    for path in snapshots_dir.iterdir():
        if path.name == current or path.is_symlink() or not path.is_dir():
            continue
        if (path.name.startswith((_TMP_PREFIX, _TOMBSTONE_PREFIX))
                or (_VERSION_NAME.fullmatch(path.name) and not (path / MANIFEST).exists())):
            shutil.rmtree(path, ignore_errors=True)


def _remove_old_versions(snapshots_dir: Path, keep: int) -> None:
    """Keep the newest `keep` versions (a server may still be loading the previous one). Only
    versions a publisher named are counted and pruned: a directory copied in by hand is the
    operator's.

    Each version is first renamed to a `.deleting-*` tombstone, atomically, and only then
    deleted: a publisher killed during the deletion leaves a tombstone that the next one sweeps,
    never a half-deleted directory that still looks like a version.
    """
    current = current_version(snapshots_dir)
    published = [v for v in list_versions(snapshots_dir) if _VERSION_NAME.fullmatch(v)]
    doomed = [v for v in sorted(published, reverse=True)[keep:] if v != current]
    tombstones = []
    for version in doomed:
        tombstone = snapshots_dir / f"{_TOMBSTONE_PREFIX}{version}"
        with contextlib.suppress(OSError):  # left for the next publish to retry
            (snapshots_dir / version).rename(tombstone)
            tombstones.append(tombstone)
    if tombstones:
        _fsync_dir(snapshots_dir)
    for tombstone in tombstones:
        shutil.rmtree(tombstone, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
