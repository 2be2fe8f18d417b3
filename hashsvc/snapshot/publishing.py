"""Building a snapshot of the store and making it current, safely against crashes and rivals.

The snapshot is written to a temporary directory and fsync'd; the repository (repository.py)
then makes it current: a local directory by a rename and an atomic switch of `current`, a bucket
by uploading every file, then the manifest, then the pointer. Either way a reader never sees half
a snapshot and a crash at any point leaves the previous one in force.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Sequence
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
from hashsvc.snapshot.layering import write_layered
from hashsvc.snapshot.loading import sha256_file
from hashsvc.snapshot.model import FORMAT_VERSION, MANIFEST, PublishResult, StringTable
from hashsvc.snapshot.repository import (
    TMP_PREFIX,
    LocalRepository,
    SnapshotRepository,
    fsync_dir,
)
from hashsvc.store import Bank, Store
from hashsvc.store.exchange_model import provenance_by_entry


def publish(
    store: Store, repository: SnapshotRepository | Path, *, force: bool = False, keep: int = 3,
    lock_wait: float = 0.0,
) -> PublishResult:
    """Build a snapshot of `store` and make it current, unless nothing changed (or `force`).

    A small change since the current version's base is published as a layered version (the
    base's files plus a changes layer; layering.py); `force` always writes a full snapshot, a
    compaction.

    `repository` is a snapshot repository, or the path of a local one. Safe against concurrent
    publishers (the store's single-writer lock, which with PostgreSQL spans machines and fails at
    once naming its holder, or waits `lock_wait` seconds for it; then the repository's own lock)
    and against a crash at any instant (temporary directory, fsync, rename; the pointer switched
    last).
    """
    started = time.perf_counter()
    if isinstance(repository, Path):
        repository = LocalRepository(repository)
    with store.writer_lock("publish", wait=lock_wait), repository.publishing() as staging_root:
        revision = store.revision()
        current = repository.current_version()
        if current is not None and not force:
            # A `current` that cannot be read is replaced, not kept: publishing is the way out.
            with contextlib.suppress(SnapshotError):
                manifest = repository.read_manifest(current)
                if manifest["store_revision"] == revision:
                    return PublishResult(current, False, staging_root / current, manifest,
                                         time.perf_counter() - started)
        layered: dict[str, Any] | None = None
        version = _new_version(revision)
        temporary = staging_root / f"{TMP_PREFIX}{version}"
        temporary.mkdir()
        if current is not None and not force:
            layered = _write_layered(store, repository, current, temporary, version, revision)
        if layered is None:
            shutil.rmtree(temporary)  # whatever a layered attempt left: a full snapshot is due
            temporary.mkdir()
        manifest = layered or _write_snapshot(store, temporary, version, revision)
        fsync_dir(temporary)
        final, transfer = repository.commit(temporary, version, manifest)
        repository.collect_garbage(keep=max(keep, 2))
    return PublishResult(version, True, final, manifest, time.perf_counter() - started,
                         transfer.uploaded_objects, transfer.uploaded_bytes)


def _write_layered(store: Store, repository: SnapshotRepository, current: str, directory: Path,
                   version: str, revision: int) -> dict[str, Any] | None:
    """A layered version on `current`'s base (layering.py), or None when a full one is due."""
    writer = _FileWriter(directory)
    banks = [b for b in store.list_banks() if b.enabled]
    layered = write_layered(store, repository, current, directory, writer, _banks_json(banks))
    if layered is None:
        writer.close()
        return None
    fields, base_files = layered
    manifest: dict[str, Any] = {
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "store_revision": revision,
        "hashsvc_version": __version__,
        **fields,
        "files": {**base_files, **writer.files},
    }
    writer.json(MANIFEST, manifest, record=False)
    return manifest


def _banks_json(banks: list[Bank]) -> list[dict[str, Any]]:
    """banks.json: what a scan needs of each enabled bank (a layered version keeps its base's
    file, so it may only be written while this is unchanged)."""
    return [
        {"name": b.name, "kind": b.kind, "tags": list(b.tags), "thresholds": b.thresholds,
         "description": b.description, "strategies": json.loads(b.strategies.to_json())}
        for b in banks
    ]


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
    bound = {b.bank for b in store.exchange_bindings()}
    bound_ids = {bank.id for bank in banks if bank.name in bound}
    provenance: list[str | None] = []
    for batch in store.iter_active_entries():
        if bound_ids:
            provenance.extend(_provenance_of(store, batch, bound_ids))
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
    writer.json("banks.json", _banks_json(banks))
    writer.array("entries.ids.npy", np.asarray(entry_ids, dtype=np.int64))
    writer.array("entries.banks.npy", np.asarray(entry_banks, dtype=np.int32))
    if len(variant_codes) > 1:
        writer.array("entries.variants.npy", np.asarray(variants, dtype=np.uint8))
    # provenance only when some row has any: a store without exchanges writes what it did
    columns = [("external_ids", external_ids), ("metadata", metadata)]
    if any(provenance):
        columns.append(("provenance", provenance))
    for name, strings in columns:
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


_PROVENANCE_QUERY_IDS = 5000  # entry ids per provenance query (SQLite's and psycopg's limits)


def _provenance_of(store: Store, batch: Sequence[Sequence[Any]], bound_ids: set[int]
                   ) -> list[str | None]:
    """The provenance JSON of each row of `batch` (None for banks bound to no exchange): what
    a match of the row reports, carried in the snapshot as its metadata is."""
    ids = [row[0] for row in batch if row[1] in bound_ids]
    texts: dict[int, str] = {}
    for start in range(0, len(ids), _PROVENANCE_QUERY_IDS):
        texts.update(provenance_by_entry(
            store.entries_provenance(ids[start:start + _PROVENANCE_QUERY_IDS])))
    return [texts.get(row[0]) for row in batch]


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

    def close(self) -> None:
        """Discard: wait for the checksums in flight and stop the thread."""
        self._pool.shutdown()

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


def _new_version(revision: int) -> str:
    """Versions sort by creation time and say which store revision they hold."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-r{revision}"
