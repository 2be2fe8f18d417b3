"""Changes made since the loaded snapshot, applied in memory: seconds, not a rebuild.

An AdminService add or disable must change scan results within a second; rebuilding a 10M-entry
snapshot takes far longer. So each server keeps, beside its snapshot, a small `Delta` read from
the store (`Store.changes_since(snapshot revision)`):

- every entry changed since the snapshot is a *tombstone*: its snapshot copy, if any, is ignored;
- the changed entries that are active now are matched by brute force from this side table.

Re-reading a change the snapshot already holds is therefore harmless, and the next publish folds
everything into a new snapshot, after which the delta is empty again.

A layered snapshot (snapshot/layering.py) carries the changes between its base files and its
revision in exactly this shape, read from the same change feed when it was published. Its delta
(`for_snapshot`) is the layer's, built once per loaded snapshot, under the live changes since the
snapshot's revision: every id either one changed is a tombstone, and the layer's active entries
that a live change touched again give way to the live ones. That is the delta a server would
build from `changes_since(base revision)`, so the matches are those of a full snapshot.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.snapshot import BankInfo, Snapshot
from hashsvc.snapshot.model import SnapshotLayer
from hashsvc.store import Bank, StoreChanges

# The delta each loaded layer becomes, built once: live changes arrive many times a second.
_LAYER_DELTAS: weakref.WeakKeyDictionary[SnapshotLayer, Delta] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class DeltaEntry:
    entry_id: int
    bank: str
    external_id: str | None
    metadata: dict[str, Any] | None
    variant: str = ""


@dataclass
class DeltaTable:
    """The active changed entries of one algorithm: codes as a (n, bytes) array."""

    codes: npt.NDArray[np.uint8]
    entries: list[DeltaEntry]

    def __post_init__(self) -> None:
        # Compared 64 bits at a time (every kind's width is a multiple of 8 bytes): a quarter
        # of the time of bytes, which is what a layer of thousands of entries costs a scan.
        self._words = np.ascontiguousarray(self.codes).view(np.uint64)

    def within(self, query: bytes, radius: int) -> list[tuple[int, int]]:
        """(index into `entries`, distance) of every code within `radius` of `query`."""
        if not self.entries:
            return []
        q = np.frombuffer(query, dtype=np.uint64)
        distances = np.bitwise_count(self._words ^ q).sum(axis=1, dtype=np.int64)
        hits = np.flatnonzero(distances <= radius)
        return [(int(i), int(distances[i])) for i in hits]


@dataclass
class Delta:
    revision: int  # the store revision it reflects
    tombstones: frozenset[int] = frozenset()
    tables: dict[str, DeltaTable] = field(default_factory=dict)
    banks: dict[str, BankInfo] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(t.entries) for t in self.tables.values())

    @classmethod
    def for_snapshot(cls, snapshot: Snapshot, changes: StoreChanges | None = None,
                     banks: list[Bank] | None = None) -> Delta:
        """What a server matches beside `snapshot`: its layer (if any) under the store's
        `changes` since the snapshot's revision (matched with the live `banks`)."""
        live = cls.build(changes, banks or []) if changes is not None else None
        if snapshot.layer is None:
            return live if live is not None else cls(
                revision=int(snapshot.manifest["store_revision"]))
        layer = _LAYER_DELTAS.get(snapshot.layer)
        if layer is None:
            layer = cls.build(StoreChanges(
                revision=int(snapshot.manifest["store_revision"]),
                changed=frozenset(snapshot.layer.tombstones.tolist()),
                active=snapshot.layer.active(snapshot.banks)), [])
            layer.banks = {bank.name: bank for bank in snapshot.banks}
            _LAYER_DELTAS[snapshot.layer] = layer
        return live.over(layer) if live is not None else layer

    def over(self, layer: Delta) -> Delta:
        """These changes made after `layer`'s, applied on top of it."""
        if not self.tombstones:
            return Delta(self.revision, layer.tombstones, layer.tables, self.banks)
        tables: dict[str, DeltaTable] = {}
        for algorithm in dict.fromkeys([*layer.tables, *self.tables]):
            below, above = layer.tables.get(algorithm), self.tables.get(algorithm)
            if below is None:
                if above is not None:
                    tables[algorithm] = above
                continue
            keep = [i for i, entry in enumerate(below.entries)
                    if entry.entry_id not in self.tombstones]
            codes, entries = below.codes[keep], [below.entries[i] for i in keep]
            if above is not None:
                codes = np.concatenate([codes, above.codes])
                entries += above.entries
            tables[algorithm] = DeltaTable(codes, entries)
        return Delta(self.revision, layer.tombstones | self.tombstones, tables, self.banks)

    @classmethod
    def build(cls, changes: StoreChanges, banks: list[Bank]) -> Delta:
        grouped: dict[str, tuple[list[bytes], list[DeltaEntry]]] = {}
        for entry_id, bank, algorithm, value, external_id, metadata, variant in changes.active:
            codes, entries = grouped.setdefault(algorithm, ([], []))
            codes.append(value)
            entries.append(DeltaEntry(entry_id, bank, external_id,
                                      json.loads(metadata) if metadata else None, variant))
        tables = {
            algorithm: DeltaTable(
                np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(
                    len(codes), get_algorithm(algorithm).bits // 8),
                entries,
            )
            for algorithm, (codes, entries) in grouped.items()
        }
        return cls(
            revision=changes.revision,
            tombstones=changes.changed,
            tables=tables,
            banks={b.name: BankInfo(b.name, b.kind, b.tags, b.thresholds, b.strategies)
                   for b in banks if b.enabled},
        )
