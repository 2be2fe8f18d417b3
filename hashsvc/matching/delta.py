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
from hashsvc.matching.mih import CODE_BITS as MIH_BITS
from hashsvc.matching.mih import MultiIndexHash
from hashsvc.snapshot import BankInfo, Snapshot
from hashsvc.snapshot.model import SnapshotLayer
from hashsvc.store import Bank, StoreChanges
from hashsvc.store.exchange_model import Provenance, provenance_from_json

# The delta each loaded layer becomes, built once: live changes arrive many times a second.
_LAYER_DELTAS: weakref.WeakKeyDictionary[SnapshotLayer, Delta] = weakref.WeakKeyDictionary()
# PDQ side tables this large are searched through a MultiIndexHash rather than NumPy: see
# README "Scaling out" for what a full layer costs a scan either way.
INDEX_FROM = 256


@dataclass(frozen=True)
class DeltaEntry:
    entry_id: int
    bank: str
    external_id: str | None
    metadata: dict[str, Any] | None
    variant: str = ""
    provenance: tuple[Provenance, ...] = ()


@dataclass
class DeltaTable:
    """The active changed entries of one algorithm: codes as a (n, bytes) array; `hidden`, the
    ids of entries a later change made stale (a layer's, under live changes)."""

    codes: npt.NDArray[np.uint8]
    entries: list[DeltaEntry]
    index: MultiIndexHash | None = None  # PDQ tables of `INDEX_FROM` entries or more
    hidden: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Compared 64 bits at a time (every kind's width is a multiple of 8 bytes): a quarter
        # of the time of bytes.
        self._words = np.ascontiguousarray(self.codes).view(np.uint64)

    @classmethod
    def make(cls, codes: npt.NDArray[np.uint8], entries: list[DeltaEntry]) -> DeltaTable:
        """A table, indexed when it is large: a layer holds thousands of entries, and the
        multi-index kernel's search (or its C scan) is what keeps them cheap to match."""
        indexed = len(entries) >= INDEX_FROM and codes.shape[1] * 8 == MIH_BITS
        return cls(codes, entries, MultiIndexHash(codes) if indexed else None)

    def hiding(self, ids: frozenset[int]) -> DeltaTable:
        """The same table (and index) with `ids` left out of every search."""
        return DeltaTable(self.codes, self.entries, self.index, self.hidden | ids)

    def __len__(self) -> int:
        if not self.hidden:
            return len(self.entries)
        return sum(1 for entry in self.entries if entry.entry_id not in self.hidden)

    def within(self, query: bytes, radius: int) -> list[tuple[int, int]]:
        """(index into `entries`, distance) of every code within `radius` of `query`."""
        if not self.entries:
            return []
        if self.index is not None:
            _, found, labels = self.index.range_search(
                np.frombuffer(query, dtype=np.uint8).reshape(1, -1), radius)
            hits = list(zip(labels.tolist(), found.tolist(), strict=True))
        else:
            q = np.frombuffer(query, dtype=np.uint64)
            distances = np.bitwise_count(self._words ^ q).sum(axis=1, dtype=np.int64)
            hits = [(int(i), int(distances[i])) for i in np.flatnonzero(distances <= radius)]
        if self.hidden:
            hits = [hit for hit in hits if self.entries[hit[0]].entry_id not in self.hidden]
        return hits


@dataclass
class Delta:
    revision: int  # the store revision it reflects
    tombstones: frozenset[int] = frozenset()
    tables: dict[str, DeltaTable] = field(default_factory=dict)
    banks: dict[str, BankInfo] = field(default_factory=dict)
    # A layered snapshot's changes since its base, searched beside `tables` (see above), with
    # the snapshot's banks: as in a full snapshot, bank settings change at the next publish.
    layer: dict[str, DeltaTable] = field(default_factory=dict)
    layer_banks: dict[str, BankInfo] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(t) for t in [*self.tables.values(), *self.layer.values()])

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
            built = cls.build(StoreChanges(
                revision=int(snapshot.manifest["store_revision"]),
                changed=frozenset(snapshot.layer.tombstones.tolist()),
                active=snapshot.layer.active(snapshot.banks),
                provenance=snapshot.layer.provenance_by_id()), [])
            banks_then = {bank.name: bank for bank in snapshot.banks}
            layer = cls(built.revision, built.tombstones, banks=banks_then, layer=built.tables,
                        layer_banks=banks_then)
            _LAYER_DELTAS[snapshot.layer] = layer
        return live.over(layer) if live is not None else layer

    def over(self, layer: Delta) -> Delta:
        """These changes, made after `layer`'s, applied on top of it: the layer's entries that
        they touched again are hidden (the live copy, if any, is in `tables`)."""
        return Delta(self.revision, layer.tombstones | self.tombstones, self.tables, self.banks,
                     {algorithm: table.hiding(self.tombstones) if self.tombstones else table
                      for algorithm, table in layer.layer.items()}, layer.layer_banks)

    @classmethod
    def build(cls, changes: StoreChanges, banks: list[Bank]) -> Delta:
        grouped: dict[str, tuple[list[bytes], list[DeltaEntry]]] = {}
        for entry_id, bank, algorithm, value, external_id, metadata, variant in changes.active:
            codes, entries = grouped.setdefault(algorithm, ([], []))
            codes.append(value)
            entries.append(DeltaEntry(
                entry_id, bank, external_id, json.loads(metadata) if metadata else None, variant,
                provenance_from_json(entry_id, changes.provenance.get(entry_id))))
        tables = {
            algorithm: DeltaTable.make(
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
