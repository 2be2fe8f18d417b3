"""Immutable, versioned snapshots of the store: the artifact every scanner loads.

Layout of `snapshots/<version>/`:

    manifest.json                 version, created_at, store revision, counts, sha256 of each file
    banks.json                    the enabled banks: name, kind, tags, thresholds
    entries.ids.npy               entry id of each entry row (int64)
    entries.banks.npy             bank index of each entry row (int32)
    entries.external_ids.{bin,offsets.npy}, entries.metadata.{bin,offsets.npy}
    pdq.mih.{codes,layout,ids,offsets}.npy
                                  PDQ: a multi-index-hashing table of the distinct hashes
                                  (exact radius search; see mih.py)
    <algorithm>.faiss             pHash/dHash: a FAISS binary index of the distinct hashes
    <algorithm>.codes.npy         exact kinds: the distinct hashes, sorted, for binary search
    <algorithm>.postings.{offsets,rows}.npy
                                  distinct hash i -> entry rows rows[offsets[i]:offsets[i+1]]

Distinct hashes are indexed once, however many banks list them; the postings map a FAISS id back to
every entry. Everything is written to a temporary directory, fsync'd and renamed, and only then is
`snapshots/current` (a one-line file naming the version) replaced by an atomic rename, so a reader
never sees half a snapshot and a crash at any point leaves the previous one in force. Loading checks
every file's sha256 against the manifest and refuses a snapshot that does not match.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from hashsvc import __version__
from hashsvc.algorithms import ALGORITHMS, get_algorithm
from hashsvc.errors import NoSnapshotError, SnapshotError
from hashsvc.mih import CODE_BITS as MIH_BITS
from hashsvc.mih import FILES as MIH_FILES
from hashsvc.mih import MultiIndexHash
from hashsvc.store import Store
from hashsvc.strategies import PLAIN, MatchStrategies

FORMAT_VERSION = 2  # 2: PDQ indexed by multi-index hashing; format 1 (FAISS) still loads
READABLE_FORMATS = (1, 2)
CURRENT = "current"
MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class BankInfo:
    """What a scan needs to know about a bank, frozen into the snapshot."""

    name: str
    kind: str
    tags: tuple[str, ...]
    thresholds: dict[str, int]
    strategies: MatchStrategies = PLAIN

    def threshold(self, algorithm: str) -> int:
        return self.thresholds.get(algorithm, get_algorithm(algorithm).default_threshold)


@dataclass(frozen=True)
class PublishResult:
    version: str
    published: bool  # False when the store had not changed since the current snapshot
    path: Path
    manifest: dict[str, Any]
    seconds: float


class StringTable:
    """Many short strings in one blob plus offsets: memory-mappable, O(1) to load and look up."""

    def __init__(self, blob: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> None:
        self._blob = blob
        self._offsets = offsets

    def get(self, row: int) -> str | None:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return bytes(self._blob[start:end]).decode("utf-8") if end > start else None

    @staticmethod
    def encode(values: list[str | None]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        encoded = [v.encode("utf-8") if v else b"" for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


@dataclass
class HashTable:
    """The distinct hashes of one algorithm and, for each, the entry rows that list it."""

    algorithm: str
    offsets: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    index: Any = None  # perceptual kinds: MultiIndexHash (PDQ) or a faiss.IndexBinary
    codes: npt.NDArray[Any] | None = None  # sorted S<n> array for exact kinds

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def entry_rows(self, code_index: int) -> npt.NDArray[np.int64]:
        return self.rows[self.offsets[code_index] : self.offsets[code_index + 1]]


@dataclass
class Snapshot:
    """A loaded snapshot. Read-only after loading, so any number of threads may share it."""

    version: str
    path: Path
    manifest: dict[str, Any]
    banks: list[BankInfo]
    entry_ids: npt.NDArray[np.int64]
    entry_banks: npt.NDArray[np.int32]
    external_ids: StringTable
    metadata: StringTable
    tables: dict[str, HashTable]
    loaded_at: float
    # Which strategy's extra hash each row is (strategies.py): codes into `variant_names`,
    # None when every row is a plain hash (and in snapshots written before strategies existed).
    entry_variants: npt.NDArray[np.uint8] | None = None
    variant_names: tuple[str, ...] = ("",)

    def variant(self, row: int) -> str:
        if self.entry_variants is None:
            return ""
        return self.variant_names[int(self.entry_variants[row])]

    @property
    def created_at(self) -> float:
        return dt.datetime.fromisoformat(self.manifest["created_at"]).timestamp()

    @property
    def entry_count(self) -> int:
        return len(self.entry_ids)

    def entry_metadata(self, row: int) -> dict[str, Any] | None:
        text = self.metadata.get(row)
        return json.loads(text) if text else None


# ---- building -------------------------------------------------------------------------------


def publish(
    store: Store, snapshots_dir: Path, *, force: bool = False, keep: int = 3
) -> PublishResult:
    """Build a snapshot of `store` and make it current, unless nothing changed (or `force`).

    Safe against concurrent publishers (an exclusive lock) and against a crash at any instant
    (temporary directory, fsync, rename; `current` switched last).
    """
    started = time.perf_counter()
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    with _publish_lock(snapshots_dir):
        _remove_stale_temporaries(snapshots_dir)
        revision = store.revision()
        current = current_version(snapshots_dir)
        if current is not None and not force:
            manifest = read_manifest(snapshots_dir / current)
            if manifest.get("store_revision") == revision:
                return PublishResult(current, False, snapshots_dir / current, manifest,
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
            self._digests[name] = self._pool.submit(_sha256, path)


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


def _remove_stale_temporaries(snapshots_dir: Path) -> None:
    """Half-written snapshots of a crashed publisher; safe to delete under the publish lock."""
    for path in snapshots_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _remove_old_versions(snapshots_dir: Path, keep: int) -> None:
    """Keep the newest `keep` versions (a server may still be loading the previous one)."""
    current = current_version(snapshots_dir)
    versions = sorted(list_versions(snapshots_dir), reverse=True)
    for version in versions[keep:]:
        if version != current:
            shutil.rmtree(snapshots_dir / version, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---- reading --------------------------------------------------------------------------------


def list_versions(snapshots_dir: Path) -> list[str]:
    if not snapshots_dir.is_dir():
        return []
    return sorted(
        p.name for p in snapshots_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
    )


def current_version(snapshots_dir: Path) -> str | None:
    try:
        version = (snapshots_dir / CURRENT).read_text().strip()
    except FileNotFoundError:
        return None
    return version or None


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {directory}: {MANIFEST} is missing") from None
    except json.JSONDecodeError as err:
        raise SnapshotError(f"snapshot {directory}: {MANIFEST} is not valid JSON: {err}") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise SnapshotError(
            f"snapshot {directory}: format {manifest.get('format')!r} is not supported "
            f"(this hashsvc reads format {FORMAT_VERSION})"
        )
    return manifest


def load_current(snapshots_dir: Path) -> Snapshot:
    version = current_version(snapshots_dir)
    if version is None:
        raise NoSnapshotError(
            f"no snapshot has been published in {snapshots_dir} (run `indexer publish`)"
        )
    return load(snapshots_dir / version)


def load(directory: Path) -> Snapshot:
    """Load and verify one snapshot directory; raises `SnapshotError` rather than half-load."""
    manifest = read_manifest(directory)
    files: dict[str, dict[str, Any]] = manifest["files"]
    for name in files:
        if not (directory / name).exists():
            raise SnapshotError(f"snapshot {directory.name}: file {name} is missing")
    # hashlib releases the GIL: one thread per core halves the check, most of a 10M load.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        digests = dict(zip(files, pool.map(_sha256, (directory / name for name in files)),
                           strict=True))
    for name, expected in files.items():
        actual = digests[name]
        if actual != expected["sha256"]:
            raise SnapshotError(
                f"snapshot {directory.name}: checksum mismatch for {name} "
                f"(manifest {expected['sha256'][:12]}…, file {actual[:12]}…): refusing to load"
            )
    try:
        return _load_verified(directory, manifest, files)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise SnapshotError(f"snapshot {directory.name}: cannot load: {err}") from None


def _load_verified(
    directory: Path, manifest: dict[str, Any], files: dict[str, dict[str, Any]]
) -> Snapshot:
    def array(name: str) -> npt.NDArray[Any]:
        loaded: npt.NDArray[Any] = np.load(directory / name, mmap_mode="r", allow_pickle=False)
        return loaded

    banks = [
        BankInfo(name=b["name"], kind=b["kind"], tags=tuple(b["tags"]),
                 thresholds={k: int(v) for k, v in b["thresholds"].items()},
                 strategies=MatchStrategies.from_dict(b.get("strategies", {})))
        for b in json.loads((directory / "banks.json").read_text())
    ]
    tables: dict[str, HashTable] = {}
    for algorithm in manifest["counts"]["by_algorithm"]:
        table = HashTable(
            algorithm=algorithm,
            offsets=array(f"{algorithm}.postings.offsets.npy"),
            rows=array(f"{algorithm}.postings.rows.npy"),
        )
        if f"{algorithm}.mih.codes.npy" in files:
            table.index = MultiIndexHash.from_arrays(
                {name: array(f"{algorithm}.mih.{name}.npy") for name in MIH_FILES})
        elif f"{algorithm}.faiss" in files:
            # Memory-mapped, zero copy: worker processes share one copy in the page cache.
            table.index = faiss.read_index_binary(str(directory / f"{algorithm}.faiss"),
                                                  faiss.IO_FLAG_MMAP_IFC)
        else:
            table.codes = array(f"{algorithm}.codes.npy")
        tables[algorithm] = table
    return Snapshot(
        version=manifest["version"],
        path=directory,
        manifest=manifest,
        banks=banks,
        entry_ids=array("entries.ids.npy"),
        entry_banks=array("entries.banks.npy"),
        external_ids=StringTable(array("entries.external_ids.bin.npy"),
                                 array("entries.external_ids.offsets.npy")),
        metadata=StringTable(array("entries.metadata.bin.npy"),
                             array("entries.metadata.offsets.npy")),
        tables=tables,
        loaded_at=time.time(),
        entry_variants=array("entries.variants.npy") if "entries.variants.npy" in files else None,
        variant_names=tuple(manifest.get("variants", [""])),
    )
