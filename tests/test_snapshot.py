"""Snapshots: build, publish atomically, verify on load, refuse corruption."""

from __future__ import annotations

import json

import pytest

from hashsvc.errors import NoSnapshotError, SnapshotError
from hashsvc.home import DataHome
from hashsvc.snapshot import current_version, list_versions, load, load_current, publish
from hashsvc.store import EntrySelector, NewEntry, Store


def _fill(store: Store) -> None:
    store.create_bank("a", tags=["t1"], thresholds={"pdq": 20})
    store.create_bank("b", kind="allowlist")
    store.create_bank("off", enabled=False)
    store.add_entries("a", [NewEntry("pdq", bytes([n]) * 32, f"a{n}", {"n": n}) for n in range(5)]
                      + [NewEntry("md5", bytes([7]) * 16, "m")])
    store.add_entries("b", [NewEntry("pdq", bytes([1]) * 32, "shared-hash")])
    store.add_entries("off", [NewEntry("pdq", bytes([9]) * 32)])
    store.set_disabled("a", EntrySelector(external_ids=["a4"]), True)


def test_publish_writes_a_complete_manifest_and_loads(store: Store, home: DataHome) -> None:
    _fill(store)
    result = publish(store, home.snapshots_dir)
    assert result.published and current_version(home.snapshots_dir) == result.version
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["store_revision"] == store.revision()
    # Disabled entries and disabled banks are left out; the shared hash is indexed once.
    assert manifest["counts"] == {
        "entries": 6,
        "by_algorithm": {"pdq": 5, "md5": 1},
        "by_bank": {"a": {"pdq": 4, "md5": 1}, "b": {"pdq": 1}},
    }
    assert set(manifest["files"]) == {p.name for p in result.path.iterdir()} - {"manifest.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())

    snapshot = load_current(home.snapshots_dir)
    assert snapshot.version == result.version and snapshot.entry_count == 6
    assert [b.name for b in snapshot.banks] == ["a", "b"]
    assert len(snapshot.tables["pdq"]) == 4  # bytes([1])*32 is in both banks: one code
    assert len(snapshot.tables["pdq"].index.arrays()["codes"]) == 4
    assert snapshot.external_ids.get(0) == "a0" and snapshot.entry_metadata(0) == {"n": 0}


def test_unchanged_store_is_not_republished(store: Store, home: DataHome) -> None:
    _fill(store)
    first = publish(store, home.snapshots_dir)
    again = publish(store, home.snapshots_dir)
    assert not again.published and again.version == first.version
    forced = publish(store, home.snapshots_dir, force=True)
    assert forced.published and forced.version != first.version


def test_old_versions_are_pruned_but_current_is_kept(store: Store, home: DataHome) -> None:
    store.create_bank("a")
    versions = []
    for n in range(5):
        store.add_entries("a", [NewEntry("pdq", bytes([n]) * 32)])
        versions.append(publish(store, home.snapshots_dir, keep=2).version)
    assert list_versions(home.snapshots_dir) == versions[-2:]
    assert current_version(home.snapshots_dir) == versions[-1]


def test_corrupt_file_is_refused_with_a_clear_error(store: Store, home: DataHome) -> None:
    _fill(store)
    result = publish(store, home.snapshots_dir)
    index = result.path / "pdq.mih.ids.npy"
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"checksum mismatch for pdq.mih.ids.npy.*refusing"):
        load(result.path)


def test_missing_file_and_bad_manifest(store: Store, home: DataHome) -> None:
    _fill(store)
    result = publish(store, home.snapshots_dir)
    (result.path / "entries.ids.npy").unlink()
    with pytest.raises(SnapshotError, match=r"entries.ids.npy is missing"):
        load(result.path)
    (result.path / "manifest.json").write_text("{")
    with pytest.raises(SnapshotError, match=r"not valid JSON"):
        load(result.path)


def test_no_snapshot_yet(home: DataHome) -> None:
    with pytest.raises(NoSnapshotError, match=r"indexer publish"):
        load_current(home.snapshots_dir)


def test_empty_store_publishes_an_empty_snapshot(store: Store, home: DataHome) -> None:
    publish(store, home.snapshots_dir)
    snapshot = load_current(home.snapshots_dir)
    assert snapshot.entry_count == 0 and snapshot.tables == {}


def test_an_unreadable_current_is_replaced_and_never_swept(store: Store, home: DataHome) -> None:
    _fill(store)
    first = publish(store, home.snapshots_dir)
    (first.path / "manifest.json").unlink()
    # Nothing changed in the store, but `current` cannot be read: a new snapshot replaces it.
    replaced = publish(store, home.snapshots_dir)
    assert replaced.published and current_version(home.snapshots_dir) == replaced.version
    assert first.path.is_dir()  # it was current when the sweep ran
    publish(store, home.snapshots_dir)
    assert not first.path.exists()  # no longer current, and no manifest: debris
