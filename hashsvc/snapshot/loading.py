"""Finding and loading snapshots: `current`, the versions on disk, and a verified load.

Loading checks every file's sha256 against the manifest and refuses a snapshot that does not
match, raising `SnapshotError` rather than half-loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from hashsvc.errors import NoSnapshotError, SnapshotError
from hashsvc.mih import FILES as MIH_FILES
from hashsvc.mih import MultiIndexHash
from hashsvc.snapshot.model import (
    CURRENT,
    FORMAT_VERSION,
    MANIFEST,
    READABLE_FORMATS,
    BankInfo,
    HashTable,
    Snapshot,
    StringTable,
)
from hashsvc.strategies import MatchStrategies


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
        digests = dict(zip(files, pool.map(sha256_file, (directory / name for name in files)),
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

