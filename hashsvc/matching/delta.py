"""Changes made since the loaded snapshot, applied in memory: seconds, not a rebuild.

An AdminService add or disable must change scan results within a second; rebuilding a 10M-entry
snapshot takes far longer. So each server keeps, beside its snapshot, a small `Delta` read from
the store (`Store.changes_since(snapshot revision)`):

- every entry changed since the snapshot is a *tombstone*: its snapshot copy, if any, is ignored;
- the changed entries that are active now are matched by brute force from this side table.

Re-reading a change the snapshot already holds is therefore harmless, and the next publish folds
everything into a new snapshot, after which the delta is empty again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.snapshot import BankInfo
from hashsvc.store import Bank, StoreChanges


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

    def within(self, query: bytes, radius: int) -> list[tuple[int, int]]:
        """(index into `entries`, distance) of every code within `radius` of `query`."""
        if not self.entries:
            return []
        q = np.frombuffer(query, dtype=np.uint8)
        distances = np.bitwise_count(self.codes ^ q).sum(axis=1, dtype=np.int64)
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
