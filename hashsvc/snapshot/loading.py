"""Finding and loading snapshots: `current`, the versions on disk, and a verified load.

A snapshot is identified by its directory's name, the name `current` holds: that is what a server
compares to decide whether to reload, and what it reports. (The manifest's `version` only records
the name it was published under; a copy under another name is another version.)

Loading refuses, with a `SnapshotError` naming the file and what is wrong, rather than half-load:
the manifest's shape (manifest.py), every file's sha256, then every array's dtype and
shape against the manifest's counts and against each other, and every row index against what it
indexes. A snapshot that passes can be scanned without an IndexError; one that does not is never
swapped in, so the one being served keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Never

import faiss
import numpy as np
import numpy.typing as npt

from hashsvc.errors import NoSnapshotError, SnapshotError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.matching.mih import FILES as MIH_FILES
from hashsvc.matching.mih import MultiIndexHash
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.snapshot.manifest import read_manifest
from hashsvc.snapshot.model import (
    CURRENT,
    MANIFEST,
    BankInfo,
    HashTable,
    Snapshot,
    SnapshotLayer,
    StringTable,
)


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


def version_dir(snapshots_dir: Path, version: str) -> Path:
    """The directory of `version`; a name that could point elsewhere (`../x`, `.tmp-…`) is
    refused, so `current` can only ever select a published snapshot of this directory."""
    if Path(version).name != version or version.startswith(".") or "\0" in version:
        raise SnapshotError(f"{snapshots_dir / CURRENT} names {version[:80]!r}, which is not "
                            f"a snapshot version in {snapshots_dir}")
    return snapshots_dir / version


def load_current(snapshots_dir: Path) -> Snapshot:
    version = current_version(snapshots_dir)
    if version is None:
        raise NoSnapshotError(
            f"no snapshot has been published in {snapshots_dir} (run `indexer publish`)"
        )
    return load(version_dir(snapshots_dir, version))


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
        return _Reader(directory, manifest).snapshot()
    except SnapshotError:
        raise
    except Exception as err:  # whatever numpy or faiss raise on a bad file: refused, not a crash
        raise SnapshotError(f"snapshot {directory.name}: cannot load: "
                            f"{type(err).__name__}: {err}") from None


class _Reader:
    """Opens the files of a checksum-verified snapshot, each checked against the counts first."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        self.files: dict[str, Any] = manifest["files"]

    def snapshot(self) -> Snapshot:
        # A layered version's arrays are its base's: they hold what the base counted.
        layer = self.manifest.get("layer")
        counts = layer["base_counts"] if layer else self.manifest["counts"]
        entries: int = counts["entries"]
        banks = self.banks()
        unknown = sorted(set(counts["by_bank"]) - {bank.name for bank in banks})
        if unknown:
            self.fail(f"the manifest counts entries of banks that banks.json lacks: "
                      f"{', '.join(unknown)[:200]}")
        variant_names = tuple(self.manifest.get("variants", [""]))
        entry_variants = None
        if "entries.variants.npy" in self.files:
            entry_variants = self.rows("entries.variants.npy", np.uint8, entries,
                                       len(variant_names), "manifest `variants`")
        return Snapshot(
            version=self.directory.name,
            path=self.directory,
            manifest=self.manifest,
            banks=banks,
            entry_ids=self.array("entries.ids.npy", np.int64, (entries,), "counts.entries"),
            entry_banks=self.rows("entries.banks.npy", np.int32, entries, len(banks),
                                  "banks.json"),
            external_ids=self.strings("external_ids", entries),
            metadata=self.strings("metadata", entries),
            tables={algorithm: self.table(algorithm, count, entries)
                    for algorithm, count in counts["by_algorithm"].items()},
            loaded_at=time.time(),
            entry_variants=entry_variants,
            variant_names=variant_names,
            layer=self.layer(layer, banks) if layer else None,
            provenance=self.optional_strings("provenance", entries),
        )

    def layer(self, layer: dict[str, Any], banks: list[BankInfo]) -> SnapshotLayer:
        """A layered version's changes since its base (layering.py), checked like the base."""
        unknown = sorted(set(self.manifest["counts"]["by_bank"]) - {bank.name for bank in banks})
        if unknown:
            self.fail(f"the manifest counts entries of banks that banks.json lacks: "
                      f"{', '.join(unknown)[:200]}")
        by_algorithm: dict[str, int] = layer["by_algorithm"]
        rows = sum(by_algorithm.values())
        variant_names = tuple(layer["variants"])
        source = "layer.by_algorithm"
        return SnapshotLayer(
            base_revision=int(layer["base_revision"]),
            tombstones=self.array("layer.tombstones.npy", np.int64, (layer["tombstones"],),
                                  "layer.tombstones"),
            entry_ids=self.array("layer.ids.npy", np.int64, (rows,), source),
            entry_banks=self.rows("layer.banks.npy", np.int32, rows, len(banks), "banks.json"),
            entry_variants=self.rows("layer.variants.npy", np.uint8, rows, len(variant_names),
                                     "layer.variants"),
            variant_names=variant_names,
            external_ids=self.strings("external_ids", rows, "layer"),
            metadata=self.strings("metadata", rows, "layer"),
            provenance=self.optional_strings("provenance", rows, "layer"),
            codes={algorithm: self.array(f"layer.{algorithm}.codes.npy", np.uint8,
                                         (count, get_algorithm(algorithm).bits // 8), source)
                   for algorithm, count in sorted(by_algorithm.items())},
        )

    def banks(self) -> list[BankInfo]:
        try:
            return [
                BankInfo(name=str(b["name"]), kind=str(b["kind"]),
                         tags=tuple(str(t) for t in b["tags"]),
                         thresholds={str(k): int(v) for k, v in b["thresholds"].items()},
                         strategies=MatchStrategies.from_dict(b.get("strategies", {})))
                for b in json.loads(self.path("banks.json").read_text())
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            self.fail(f"banks.json is malformed ({type(err).__name__}: {err})")

    def table(self, algorithm: str, count: int, entries: int) -> HashTable:
        """One algorithm's distinct hashes, their index, and postings back to `count` rows."""
        kind = get_algorithm(algorithm)
        prefix = f"{algorithm}.postings"
        offsets = self.array(f"{prefix}.offsets.npy", np.int64, (None,))
        distinct = len(offsets) - 1
        self.offsets(f"{prefix}.offsets.npy", offsets, max(distinct, 0) + 1, count)
        table = HashTable(algorithm, offsets, self.rows(
            f"{prefix}.rows.npy", np.int64, count, entries, "counts.entries"))
        width = kind.bits // 8
        if kind.exact:
            table.codes = self.array(f"{algorithm}.codes.npy", f"S{width}", (distinct,),
                                     f"{prefix}.offsets.npy")
        elif f"{algorithm}.mih.codes.npy" in self.files:
            arrays = {"codes": self.array(f"{algorithm}.mih.codes.npy", np.uint8,
                                          (distinct, width), f"{prefix}.offsets.npy")}
            arrays.update({name: self.array(f"{algorithm}.mih.{name}.npy")
                           for name in MIH_FILES if name != "codes"})
            try:
                table.index = MultiIndexHash.from_arrays(arrays)
            except ValueError as err:
                self.fail(f"{algorithm}.mih.*.npy do not form an index: {err}")
            # A position past the codes fails every scan that reaches it (the kernel reports
            # the index damaged): refuse it here, while the old snapshot is still serving.
            if distinct and int(table.index.ids.max()) >= distinct:
                self.fail(f"{algorithm}.mih.ids.npy holds positions past the {distinct} codes")
        elif f"{algorithm}.faiss" in self.files:
            # Memory-mapped, zero copy: worker processes share one copy in the page cache.
            table.index = faiss.read_index_binary(str(self.path(f"{algorithm}.faiss")),
                                                  faiss.IO_FLAG_MMAP_IFC)
            if table.index.ntotal != distinct or table.index.d != kind.bits:
                self.fail(f"{algorithm}.faiss holds {table.index.ntotal} codes of "
                          f"{table.index.d} bits; expected {distinct} of {kind.bits} "
                          f"(one per distinct hash in {prefix}.offsets.npy)")
        else:
            self.fail(f"the manifest counts {algorithm} entries but lists no index for them")
        return table

    def strings(self, name: str, entries: int, prefix: str = "entries") -> StringTable:
        blob = self.array(f"{prefix}.{name}.bin.npy", np.uint8, (None,))
        offsets_file = f"{prefix}.{name}.offsets.npy"
        offsets = self.array(offsets_file, np.int64, (entries + 1,), "counts.entries + 1")
        self.offsets(offsets_file, offsets, entries + 1, len(blob))
        return StringTable(blob, offsets)

    def optional_strings(self, name: str, entries: int, prefix: str = "entries"
                         ) -> StringTable | None:
        """A string column only some snapshots have (none: written before it existed, or with
        nothing in it), checked like the others when it is there."""
        if f"{prefix}.{name}.bin.npy" not in self.files:
            return None
        return self.strings(name, entries, prefix)

    def rows(self, name: str, dtype: npt.DTypeLike, length: int, bound: int, what: str
             ) -> npt.NDArray[Any]:
        """A (length,) array of indexes, each of which must be below `bound` (one of `what`)."""
        values = self.array(name, dtype, (length,), "counts")
        if length and (int(values.min()) < 0 or int(values.max()) >= bound):
            self.fail(f"{name} holds indexes from {int(values.min())} to {int(values.max())}, "
                      f"but {what} has only {bound}")
        return values

    def offsets(self, name: str, offsets: npt.NDArray[Any], length: int, total: int) -> None:
        """Start offsets plus an end: from 0 to `total`, never decreasing."""
        if (len(offsets) != length or int(offsets[0]) != 0 or int(offsets[-1]) != total
                or not bool(np.all(offsets[1:] >= offsets[:-1]))):
            self.fail(f"{name} must rise from 0 to {total} in {length} steps")

    def array(self, name: str, dtype: npt.DTypeLike | None = None,
              shape: tuple[int | None, ...] | None = None, source: str = ""
              ) -> npt.NDArray[Any]:
        """`name`, memory-mapped; refused unless its dtype and shape are as expected (None:
        any), the expected sizes coming from `source`."""
        loaded: npt.NDArray[Any] = np.load(self.path(name), mmap_mode="r", allow_pickle=False)
        if ((dtype is not None and loaded.dtype != np.dtype(dtype)) or (shape is not None and (
                loaded.ndim != len(shape)
                or any(want not in (None, got) for got, want in zip(loaded.shape, shape,
                                                                     strict=True))))):
            expected = "×".join("N" if n is None else str(n) for n in shape or ("N",))
            got = "×".join(str(n) for n in loaded.shape) or "scalar"
            self.fail(f"{name} holds {got} {loaded.dtype}; expected {expected} "
                      f"{np.dtype(dtype) if dtype is not None else ''}"
                      + (f" (from {source})" if source else ""))
        return loaded

    def path(self, name: str) -> Path:
        """Only files the manifest lists were checksummed: never read another."""
        if name not in self.files:
            self.fail(f"{name} is not listed in {MANIFEST}")
        return self.directory / name

    def fail(self, problem: str) -> Never:
        raise SnapshotError(f"snapshot {self.directory.name}: {problem}: refusing to load")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
