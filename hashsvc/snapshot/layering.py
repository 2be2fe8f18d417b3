"""Layered versions: a small change republished as the base's files plus a small changes layer.

Why: new PDQ hashes change every PDQ index file and the entry arrays, so a full snapshot after
adding 10 entries to 1M shares no file with the one before, and every replica downloaded all of
it again (190 MB at 1M entries). A layered version instead names its base's files unchanged
(same names, same sha256: nothing is uploaded, downloaded or cached twice) plus `layer.*`, the
store's change feed since the base (`Store.changes_since(base revision)`, the feed the live delta
reads): the ids of every entry changed since (tombstones) and the changed entries active now.
A replica turns the layer into the matcher's side table of live changes (matching/delta.py).

Layers do not stack: each layered publish writes the changes since the *base*, so a version is
always a base plus at most one layer, and loading never walks a chain. A full snapshot (a
compaction) is written instead when the layer would be large (`layer_limit`: the side table is
matched by brute force on every scan, so its size bounds the cost a layer adds to a scan), when
a bank was added, removed, disabled or changed (kind, tags, thresholds, strategies: the base's
banks.json must still be true), when the base cannot be loaded, and when forced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from hashsvc.errors import SnapshotError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.snapshot.loading import load
from hashsvc.snapshot.model import LAYERED_FORMAT, Snapshot, StringTable
from hashsvc.snapshot.repository import SnapshotRepository
from hashsvc.store import Store, StoreChanges

LAYER_PREFIX = "layer."
# Entries changed since the base beyond which a publish compacts. The bound is the scan cost:
# see README "Scaling out" for one hash and ScanImage with an empty and a full layer.
LAYER_MAX_CHANGES = 10_000
# ... and beyond this share of the base, whose full snapshot is then small enough to re-send.
LAYER_MAX_SHARE = 0.25


class ArrayWriter(Protocol):
    """publishing._FileWriter: writes and checksums one file of the new version."""

    def array(self, name: str, array: npt.NDArray[Any]) -> None: ...


def layer_limit(base_entries: int) -> int:
    """The most changed entries a layer on a base of `base_entries` may hold."""
    return min(LAYER_MAX_CHANGES, max(100, int(base_entries * LAYER_MAX_SHARE)))


def base_of(manifest: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(store revision, counts, files) of the base files a version's manifest names."""
    layer = manifest.get("layer")
    if layer is None:
        return int(manifest["store_revision"]), manifest["counts"], manifest["files"]
    files = {name: entry for name, entry in manifest["files"].items()
             if not name.startswith(LAYER_PREFIX)}
    return int(layer["base_revision"]), layer["base_counts"], files


def write_layered(store: Store, repository: SnapshotRepository, current: str,
                  directory: Path, writer: ArrayWriter, banks_json: list[dict[str, Any]]
                  ) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write `current`'s base files and a layer of the store's changes since that base into
    `directory`; (manifest fields, base file records), or None when a full snapshot is due."""
    try:
        previous = repository.read_manifest(current)
    except SnapshotError:
        return None
    base_revision, base_counts, base_files = base_of(previous)
    changes = store.changes_since(base_revision)
    if len(changes.changed) > layer_limit(int(base_counts["entries"])):
        return None
    base = _link_base(repository, current, base_files, directory, banks_json, changes)
    if base is None:
        return None
    bank_index = {bank.name: i for i, bank in enumerate(base.banks)}
    by_algorithm = _write_layer(writer, changes, bank_index)
    return {
        "format": LAYERED_FORMAT,
        "counts": _served_counts(base, changes),
        "variants": previous.get("variants", [""]),  # the base rows' variant names
        "layer": {"base_revision": base_revision, "base_counts": base_counts,
                  "tombstones": len(changes.changed), "by_algorithm": by_algorithm,
                  "variants": _variant_names(changes)},
    }, base_files


def _link_base(repository: SnapshotRepository, current: str, base_files: dict[str, Any],
               directory: Path, banks_json: list[dict[str, Any]], changes: StoreChanges
               ) -> Snapshot | None:
    """The base loaded (and so verified) from `current`, its files linked into `directory`; None
    if it cannot be loaded or fetched, or its banks.json is no longer the store's."""
    try:
        with repository.checkout(current) as (source, _):
            base = load(source)
            if json.loads((source / "banks.json").read_text()) != banks_json:
                return None
            names = {bank.name for bank in base.banks}
            if any(row[1] not in names for row in changes.active):
                return None
            for name in base_files:  # hard links: the same bytes, written once on this disk
                try:
                    os.link(source / name, directory / name)
                except OSError:  # another file system
                    shutil.copyfile(source / name, directory / name)
            return base
    except (SnapshotError, OSError, ValueError):  # a damaged current: a full snapshot replaces it
        return None


def _variant_names(changes: StoreChanges) -> list[str]:
    return list(dict.fromkeys(["", *(row[6] for row in changes.active)]))


def _write_layer(writer: ArrayWriter, changes: StoreChanges, bank_index: dict[str, int]
                 ) -> dict[str, int]:
    """The layer's arrays; rows grouped by algorithm, in sorted algorithm order."""
    rows = sorted(changes.active, key=lambda row: (row[2], row[0]))
    variants = {name: i for i, name in enumerate(_variant_names(changes))}
    writer.array("layer.tombstones.npy", np.array(sorted(changes.changed), dtype=np.int64))
    writer.array("layer.ids.npy", np.array([row[0] for row in rows], dtype=np.int64))
    writer.array("layer.banks.npy", np.array([bank_index[row[1]] for row in rows],
                                             dtype=np.int32))
    writer.array("layer.variants.npy", np.array([variants[row[6]] for row in rows],
                                                dtype=np.uint8))
    columns = [(name, [row[column] for row in rows])
               for name, column in (("external_ids", 4), ("metadata", 5))]
    provenance = [changes.provenance.get(row[0]) for row in rows]
    if any(provenance):  # as in a full snapshot: only when some row has any
        columns.append(("provenance", provenance))
    for name, strings in columns:
        blob, offsets = StringTable.encode(strings)
        writer.array(f"layer.{name}.bin.npy", blob)
        writer.array(f"layer.{name}.offsets.npy", offsets)
    by_algorithm: dict[str, int] = {}
    for algorithm in sorted({row[2] for row in rows}):
        values = [row[3] for row in rows if row[2] == algorithm]
        by_algorithm[algorithm] = len(values)
        writer.array(f"layer.{algorithm}.codes.npy", np.frombuffer(
            b"".join(values), dtype=np.uint8).reshape(len(values),
                                                      get_algorithm(algorithm).bits // 8))
    return by_algorithm


def _served_counts(base: Snapshot, changes: StoreChanges) -> dict[str, Any]:
    """What a full snapshot of the same store state would count: the base's rows that no change
    touched, plus the active changed entries."""
    stale = np.isin(base.entry_ids, np.fromiter(changes.changed, dtype=np.int64))
    by_bank: dict[str, dict[str, int]] = {}
    for algorithm, table in base.tables.items():
        rows = table.rows[~stale[table.rows]]
        for bank, count in enumerate(np.bincount(base.entry_banks[rows],
                                                 minlength=len(base.banks)).tolist()):
            if count:
                by_bank.setdefault(base.banks[bank].name, {})[algorithm] = count
    for row in changes.active:
        counts = by_bank.setdefault(row[1], {})
        counts[row[2]] = counts.get(row[2], 0) + 1
    by_algorithm: dict[str, int] = {}
    for counts in by_bank.values():
        for algorithm, count in counts.items():
            by_algorithm[algorithm] = by_algorithm.get(algorithm, 0) + count
    return {"entries": sum(by_algorithm.values()), "by_algorithm": by_algorithm,
            "by_bank": by_bank}
