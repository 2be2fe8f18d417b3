"""What a loaded snapshot is: its banks, entry rows, string tables and hash tables.

Shared by the writer (publishing.py) and the reader (loading.py); see the package docstring for
the layout on disk.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.matching.strategies import PLAIN, MatchStrategies
from hashsvc.store.exchange_model import Provenance, provenance_from_json

FORMAT_VERSION = 2  # 2: PDQ indexed by multi-index hashing; format 1 (FAISS) still loads
# 3: a base plus a changes layer (layering.py). Only layered versions carry it, so that a hashsvc
# that predates layers refuses them (it would serve the base without the layer's changes) and
# still reads every full snapshot.
LAYERED_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
CURRENT = "current"
MANIFEST = "manifest.json"


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
    uploaded_objects: int = 0  # to a bucket; only files it did not already hold
    uploaded_bytes: int = 0


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


@dataclass(eq=False)  # hashed by identity: the matcher caches what it builds from a layer
class SnapshotLayer:
    """The entries changed between the base files and the version's store revision, as the
    publisher read them from the store's change feed: what a layered version adds to its base.

    `tombstones` are the ids of every entry changed since the base (their base rows, if any, are
    stale); the rest are the changed entries active at the version's revision, grouped by
    algorithm (rows `starts[a]` to `starts[a] + len(codes[a])` are algorithm `a`'s). The matcher
    treats them exactly like live changes (matching/delta.py)."""

    base_revision: int
    tombstones: npt.NDArray[np.int64]
    entry_ids: npt.NDArray[np.int64]
    entry_banks: npt.NDArray[np.int32]  # into the snapshot's banks
    entry_variants: npt.NDArray[np.uint8]  # into `variant_names`
    variant_names: tuple[str, ...]
    external_ids: StringTable
    metadata: StringTable
    codes: dict[str, npt.NDArray[np.uint8]]  # algorithm -> (n, bytes), in row order
    # exchange provenance JSON per row (exchange_model.provenance_by_entry); None: no row has
    # any (and in layers written before provenance was carried)
    provenance: StringTable | None = None

    def __len__(self) -> int:
        return len(self.entry_ids)

    def provenance_by_id(self) -> dict[int, str]:
        """Entry id -> provenance JSON, as the store's change feed carries it."""
        if self.provenance is None:
            return {}
        return {int(entry_id): text for row, entry_id in enumerate(self.entry_ids.tolist())
                if (text := self.provenance.get(row))}

    def active(self, banks: list[BankInfo]) -> list[tuple[Any, ...]]:
        """The active entries as the store's change feed lists them (StoreChanges.active)."""
        rows: list[tuple[Any, ...]] = []
        for algorithm, codes in self.codes.items():
            for code in codes:
                row = len(rows)
                rows.append((int(self.entry_ids[row]), banks[int(self.entry_banks[row])].name,
                             algorithm, code.tobytes(), self.external_ids.get(row),
                             self.metadata.get(row),
                             self.variant_names[int(self.entry_variants[row])]))
        return rows


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
    layer: SnapshotLayer | None = None  # a layered version's changes since its base files
    # exchange provenance JSON per row, as in SnapshotLayer; None: no row has any (and in
    # snapshots written before provenance was carried, which load as they always did)
    provenance: StringTable | None = None

    def variant(self, row: int) -> str:
        if self.entry_variants is None:
            return ""
        return self.variant_names[int(self.entry_variants[row])]

    @property
    def created_at(self) -> float:
        return dt.datetime.fromisoformat(self.manifest["created_at"]).timestamp()

    @property
    def entry_count(self) -> int:
        """Entries served: the base's rows less the layer's tombstones, plus the layer's."""
        count: int = self.manifest["counts"]["entries"]
        return count

    def entry_metadata(self, row: int) -> dict[str, Any] | None:
        text = self.metadata.get(row)
        return json.loads(text) if text else None

    def entry_provenance(self, row: int) -> tuple[Provenance, ...]:
        if self.provenance is None:
            return ()
        return provenance_from_json(int(self.entry_ids[row]), self.provenance.get(row))

