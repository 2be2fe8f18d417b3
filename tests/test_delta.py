"""Store changes since a snapshot are matched at once, without a rebuild, on every store
backend (the change feed is the store's)."""

from __future__ import annotations

import numpy as np
import pytest

from hashsvc.hashing.algorithms import HashValue
from hashsvc.home import DataHome
from hashsvc.matching.delta import INDEX_FROM, Delta, DeltaEntry, DeltaTable
from hashsvc.matching.matcher import Matcher, Query
from hashsvc.snapshot import load_current, publish
from hashsvc.store import EntrySelector, NewEntry, Store
from tests.conftest import REFERENCE

RNG = np.random.default_rng(99)


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def _code() -> bytes:
    return RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()


def _matcher(store: Store, home: DataHome) -> Matcher:
    snapshot = load_current(home.snapshots_dir)
    changes = store.changes_since(int(snapshot.manifest["store_revision"]))
    return Matcher(snapshot, Delta.for_snapshot(snapshot, changes, store.list_banks()))


def _ids(matcher: Matcher, code: bytes) -> list[str | None]:
    return [m.external_id for m in matcher.match([Query(HashValue("pdq", code))]).matches]


def test_adds_disables_and_removals_apply_without_a_rebuild(store: Store, home: DataHome) -> None:
    old, new, near = _code(), _code(), _code()
    store.create_bank("bank", thresholds={"pdq": 20})
    store.add_entries("bank", [NewEntry("pdq", old, "old")])
    publish(store, home.snapshots_dir)
    assert _ids(_matcher(store, home), old) == ["old"]

    store.add_entries("bank", [NewEntry("pdq", new, "new", {"k": 1})])
    matcher = _matcher(store, home)
    assert _ids(matcher, new) == ["new"]
    (match,) = matcher.match([Query(HashValue("pdq", new))]).matches
    assert (match.threshold, match.metadata, match.bank) == (20, {"k": 1}, "bank")

    store.set_disabled("bank", EntrySelector(external_ids=["old"]), True, "fp")
    assert _ids(_matcher(store, home), old) == []  # tombstoned snapshot entry
    store.set_disabled("bank", EntrySelector(external_ids=["old"]), False)
    assert _ids(_matcher(store, home), old) == ["old"]  # re-enabled: once, not twice
    store.remove_entries("bank", EntrySelector(external_ids=["old", "new"]))
    matcher = _matcher(store, home)
    assert _ids(matcher, old) == [] and _ids(matcher, new) == []

    # A new bank made after the snapshot: its entries and threshold apply at once too.
    store.create_bank("later", thresholds={"pdq": 10})
    bits = np.unpackbits(np.frombuffer(near, dtype=np.uint8))
    bits[:12] ^= 1
    store.add_entries("later", [NewEntry("pdq", np.packbits(bits).tobytes(), "12-bits-away")])
    assert _ids(_matcher(store, home), near) == []  # 12 > the bank's threshold of 10


def test_publish_folds_the_delta_into_the_snapshot(store: Store, home: DataHome) -> None:
    code = _code()
    store.create_bank("bank")
    publish(store, home.snapshots_dir)
    store.add_entries("bank", [NewEntry("pdq", code, "x")])
    assert len(_matcher(store, home).delta) == 1
    # A small change is published as a layer: the store has nothing newer for the delta, and
    # the side table is the layer's (what it costs a scan: README "Scaling out").
    layered = publish(store, home.snapshots_dir)
    assert "layer" in layered.manifest
    assert not store.changes_since(layered.manifest["store_revision"]).changed
    matcher = _matcher(store, home)
    assert len(matcher.delta) == 1 and _ids(matcher, code) == ["x"]
    publish(store, home.snapshots_dir, force=True)  # a compaction folds everything in
    matcher = _matcher(store, home)
    assert len(matcher.delta) == 0 and not matcher.delta.tombstones
    assert _ids(matcher, code) == ["x"]


def test_deleted_bank_entries_are_tombstoned(store: Store, home: DataHome) -> None:
    code = _code()
    store.create_bank("gone")
    store.add_entries("gone", [NewEntry("pdq", code, "x")])
    publish(store, home.snapshots_dir)
    store.delete_bank("gone")
    assert _ids(_matcher(store, home), code) == []


def test_exact_hashes_in_the_delta(store: Store, home: DataHome) -> None:
    store.create_bank("bank")
    publish(store, home.snapshots_dir)
    digest = bytes(range(16))
    store.add_entries("bank", [NewEntry("md5", digest, "file")])
    matches = _matcher(store, home).match([Query(HashValue("md5", digest))]).matches
    assert [(m.external_id, m.distance) for m in matches] == [("file", 0)]
    assert not _matcher(store, home).match([Query(HashValue("md5", bytes(16)))]).matches


def test_a_large_side_table_is_indexed_and_finds_the_same() -> None:
    """PDQ side tables of INDEX_FROM entries or more (a layer's) are searched by the multi-index
    kernel; on Meta's reference haystack it finds what NumPy finds, hidden entries left out."""
    hashes = REFERENCE / "hashes"
    haystack = [bytes.fromhex(line) for line in (hashes / "haystack.txt").read_text().split()]
    needles = [bytes.fromhex(line) for line in (hashes / "needles.txt").read_text().split()]
    codes = np.frombuffer(b"".join(haystack), dtype=np.uint8).reshape(-1, 32)
    entries = [DeltaEntry(i, "bank", None, None) for i in range(len(haystack))]
    indexed = DeltaTable.make(codes, entries)
    plain = DeltaTable(codes, entries)
    assert len(haystack) >= INDEX_FROM and indexed.index is not None and plain.index is None
    found = 0
    for query in needles + haystack[::50]:
        for radius in (0, 31, 70):
            assert sorted(indexed.within(query, radius)) == sorted(plain.within(query, radius))
            found += len(plain.within(query, radius))
    assert found > 0
    hidden = indexed.hiding(frozenset({0, 5}))
    assert [i for i, _ in hidden.within(haystack[5], 0)] == [] and len(hidden) == len(entries) - 2
