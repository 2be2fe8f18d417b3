"""The store: banks, entries, duplicates, transactions, on every backend (`any_store`); the
tests of SQLite's own index and upgrade machinery take `sqlite_store`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hashsvc.errors import AlreadyExistsError, HashsvcError, InvalidHashError, NotFoundError
from hashsvc.home import DataHome
from hashsvc.store import (
    SCHEMA_VERSION,
    EntryQuery,
    EntrySelector,
    NewEntry,
    SqliteStore,
    Store,
    decode_page_token,
    encode_page_token,
    open_store,
)


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


@pytest.fixture
def sqlite_store(home: DataHome) -> Iterator[SqliteStore]:
    with SqliteStore(home.store_path) as opened:
        yield opened


def _pdq(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_bank_lifecycle(store: Store) -> None:
    bank = store.create_bank("ncmec", description="NCMEC list", tags=["csam", "csam"],
                             thresholds={"PDQ": 24})
    assert (bank.name, bank.kind, bank.enabled, bank.tags) == ("ncmec", "match", True, ("csam",))
    assert bank.thresholds == {"pdq": 24}
    with pytest.raises(AlreadyExistsError, match=r"'ncmec' already exists"):
        store.create_bank("ncmec")
    store.create_bank("benign", kind="allowlist")
    assert [b.name for b in store.list_banks()] == ["benign", "ncmec"]

    updated = store.update_bank("ncmec", new_name="ncmec-2026", enabled=False, thresholds={})
    assert (updated.name, updated.enabled, updated.thresholds) == ("ncmec-2026", False, {})
    assert updated.description == "NCMEC list"  # fields not given are kept
    with pytest.raises(AlreadyExistsError):
        store.update_bank("ncmec-2026", new_name="benign")
    store.add_entries("ncmec-2026", [NewEntry("pdq", _pdq(1))])
    assert store.delete_bank("ncmec-2026") == 1
    with pytest.raises(NotFoundError, match=r"no bank named 'ncmec-2026'"):
        store.get_bank("ncmec-2026")
    assert store.stats().entries == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "invalid bank name"),
        ({"name": ""}, "invalid bank name"),
        ({"name": "ok", "kind": "block"}, "invalid bank kind"),
        ({"name": "ok", "thresholds": {"pdq": 300}}, "must be 0..256"),
        ({"name": "ok", "thresholds": {"md5": 1}}, "exact hash: it has no threshold"),
        ({"name": "ok", "tags": ["bad tag"]}, "invalid tag"),
    ],
)
def test_invalid_bank_fields_are_rejected(
    store: Store, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(HashsvcError, match=message):
        store.create_bank(**kwargs)  # type: ignore[arg-type]
    assert store.list_banks() == []


def test_unknown_algorithm_threshold(store: Store) -> None:
    with pytest.raises(InvalidHashError, match=r"unknown algorithm 'sift'"):
        store.create_bank("x", thresholds={"sift": 3})


def test_duplicates_are_counted_not_stored(store: Store) -> None:
    store.create_bank("a")
    store.create_bank("b")
    first = store.add_entries("a", [NewEntry("pdq", _pdq(1), "x"), NewEntry("pdq", _pdq(1), "y"),
                                    NewEntry("md5", bytes(16))])
    assert (first.added, first.duplicates) == (2, 1)
    again = store.add_entries("a", [NewEntry("pdq", _pdq(1)), NewEntry("pdq", _pdq(2))])
    assert (again.added, again.duplicates) == (1, 1)
    other_bank = store.add_entries("b", [NewEntry("pdq", _pdq(1))])
    assert other_bank.added == 1  # the same hash may sit in several banks
    assert store.stats().by_bank_algorithm == {"a": {"pdq": 2, "md5": 1}, "b": {"pdq": 1}}


def test_bulk_add_is_all_or_nothing(store: Store) -> None:
    store.create_bank("a")
    revision = store.revision()
    with pytest.raises(RuntimeError), store.bulk_add("a") as adder:
        adder.add([NewEntry("pdq", _pdq(n)) for n in range(1000)])
        raise RuntimeError("crash in the middle of an import")
    assert store.stats().entries == 0
    assert store.revision() == revision


def test_a_large_import_keeps_first_copies_and_rolls_back_whole(store: Store) -> None:
    """`expected` above the rebuild threshold (indexes dropped and rebuilt, on both backends):
    same duplicates, same first copies kept, same all-or-nothing as a small import."""
    store.create_bank("a")
    store.add_entries("a", [NewEntry("pdq", _pdq(n), f"old-{n}") for n in range(5)])
    revision = store.revision()
    with pytest.raises(RuntimeError), store.bulk_add("a", expected=1_000_000) as adder:
        adder.add([NewEntry("pdq", _pdq(n)) for n in range(100)])
        raise RuntimeError("crash in the middle of an import")
    assert store.stats().entries == 5 and store.revision() == revision
    with store.bulk_add("a", expected=1_000_000) as adder:
        adder.add([NewEntry("pdq", _pdq(n % 700), f"ext-{n}") for n in range(1000)])
    assert (adder.result.added, adder.result.duplicates) == (695, 305)
    found = store.find_entries("a", EntrySelector(hashes=[("pdq", _pdq(3)), ("pdq", _pdq(9))]))
    assert [e.external_id for e in found] == ["old-3", "ext-9"]
    assert len(store.changes_since(revision).changed) == 695
    result = store.add_entries("a", [NewEntry("pdq", _pdq(9)), NewEntry("pdq", _pdq(7_000))])
    assert (result.added, result.duplicates) == (1, 1)  # the rebuilt unique index holds


def _indexes(path: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                          " ORDER BY name").fetchall()


def test_a_large_import_rebuilds_the_indexes_it_drops(sqlite_store: SqliteStore) -> None:
    """`expected` above the threshold takes the drop-and-rebuild path: same results, same
    indexes afterwards, and a failure rolls the dropped indexes back with the rows."""
    sqlite_store.create_bank("a")
    indexes = _indexes(sqlite_store.path)
    assert any(name == "entries_by_external_id" for name, _ in indexes)
    with pytest.raises(RuntimeError), sqlite_store.bulk_add("a", expected=1_000_000) as adder:
        adder.add([NewEntry("pdq", _pdq(n)) for n in range(100)])
        raise RuntimeError("crash in the middle of an import")
    assert _indexes(sqlite_store.path) == indexes and sqlite_store.stats().entries == 0
    revision = sqlite_store.revision()
    with sqlite_store.bulk_add("a", expected=1_000_000) as adder:
        adder.add([NewEntry("pdq", _pdq(n % 700), f"ext-{n}") for n in range(1000)])
    assert (adder.result.added, adder.result.duplicates) == (700, 300)
    assert _indexes(sqlite_store.path) == indexes
    assert [e.id for e in sqlite_store.find_entries(
        "a", EntrySelector(external_ids=["ext-5"]))] == [6]
    assert len(sqlite_store.changes_since(revision).changed) == 700
    # Again, now with hashes already in the bank: those are duplicates and keep their rows.
    with sqlite_store.bulk_add("a", expected=1_000_000) as adder:
        adder.add([NewEntry("pdq", _pdq(n), f"new-{n}") for n in range(690, 1_690)])
    assert (adder.result.added, adder.result.duplicates) == (990, 10)
    assert [e.external_id for e in sqlite_store.find_entries("a", EntrySelector(
        hashes=[("pdq", _pdq(695)), ("pdq", _pdq(1_000))]))] == ["ext-695", "new-1000"]
    assert _indexes(sqlite_store.path) == indexes


# The entries table as schema 3 made it: uniqueness as a table constraint.
_V3_ENTRIES = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    bank_id INTEGER NOT NULL REFERENCES banks (id) ON DELETE CASCADE,
    algorithm TEXT NOT NULL, hash BLOB NOT NULL, external_id TEXT, metadata TEXT,
    added_at REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, disabled_reason TEXT,
    changed_rev INTEGER NOT NULL DEFAULT 0, variant TEXT NOT NULL DEFAULT '',
    UNIQUE (bank_id, algorithm, hash)
);
CREATE INDEX entries_by_external_id ON entries (bank_id, external_id);
CREATE INDEX entries_by_changed_rev ON entries (changed_rev);
"""


def test_a_version_3_store_is_upgraded_in_place(sqlite_store: SqliteStore) -> None:
    """Schema 4 moves uniqueness into a named index, so that large imports can drop it: the
    table is rebuilt with every row and id, and duplicates are still refused."""
    sqlite_store.create_bank("a")
    path = sqlite_store.path
    sqlite_store.close()
    with sqlite3.connect(path) as db:  # as hashsvc left a store before schema 4
        db.executescript(f"DROP TABLE entries; {_V3_ENTRIES}"
                         " UPDATE meta SET value = '3' WHERE key = 'schema';")
        db.executemany("INSERT INTO entries (id, bank_id, algorithm, hash, external_id, added_at,"
                       " disabled) VALUES (?, 1, 'pdq', ?, ?, 1.0, ?)",
                       [(10, _pdq(1), "one", 0), (12, _pdq(2), "two", 1)])
    assert any(name.startswith("sqlite_autoindex_entries") for name, _ in _indexes(path))
    with SqliteStore(path) as upgraded:
        names = [name for name, _ in _indexes(path)]
        assert "entries_unique" in names
        assert not any(name.startswith("sqlite_autoindex_entries") for name in names)
        entries = upgraded.find_entries("a", EntrySelector(ids=[10, 12]))
        assert [(e.id, e.external_id, e.disabled) for e in entries] == [
            (10, "one", False), (12, "two", True)]
        result = upgraded.add_entries("a", [NewEntry("pdq", _pdq(1)), NewEntry("pdq", _pdq(3))])
        assert (result.added, result.duplicates) == (1, 1)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),)


def test_disable_enable_remove(store: Store) -> None:
    store.create_bank("a")
    store.add_entries("a", [NewEntry("pdq", _pdq(n), f"ext-{n}") for n in range(5)])
    assert store.set_disabled("a", EntrySelector(external_ids=["ext-1", "ext-2"]), True,
                              "false positive") == 2
    entry = store.find_entries("a", EntrySelector(external_ids=["ext-1"]))[0]
    assert (entry.disabled, entry.disabled_reason) == (True, "false positive")
    assert store.set_disabled("a", EntrySelector(ids=[entry.id]), False) == 1
    assert store.remove_entries("a", EntrySelector(hashes=[("pdq", _pdq(4))])) == 1
    assert store.stats().entries == 4 and store.stats().disabled == 1
    with pytest.raises(HashsvcError, match=r"select entries"):
        store.remove_entries("a", EntrySelector())


def test_every_write_bumps_the_revision_and_survives_reopening(store: Store) -> None:
    before = store.revision()
    store.create_bank("a")
    store.add_entries("a", [NewEntry("pdq", _pdq(1), metadata={"source": "test"})])
    assert store.revision() == before + 2
    reopened = open_store(store.target)
    entry = reopened.get_entry(1)
    assert (entry.bank, entry.metadata, entry.hash) == ("a", {"source": "test"}, _pdq(1))
    assert reopened.revision() == before + 2
    reopened.close()


def test_large_selectors_are_applied_in_chunks(store: Store) -> None:
    store.create_bank("a")
    store.add_entries("a", [NewEntry("pdq", _pdq(n), f"ext-{n}") for n in range(3000)])
    selector = EntrySelector(external_ids=[f"ext-{n}" for n in range(0, 3000, 2)],
                             hashes=[("pdq", _pdq(n)) for n in range(1, 1500, 2)])
    assert len(store.find_entries("a", selector)) == 1500 + 750
    assert store.set_disabled("a", selector, True) == 2250
    assert store.remove_entries("a", selector) == 2250
    assert store.stats().entries == 750


def test_wait_for_change_is_a_hint_and_the_revision_the_truth(store: Store) -> None:
    """Whatever a wait returns (SQLite has no notifications: it sleeps and says False), a
    revision read after it sees every committed write, which is what a watcher relies on."""
    before = store.revision()
    store.create_bank("a")
    woken = store.wait_for_change(0.01)
    if isinstance(store, SqliteStore):
        assert woken is False
    assert store.revision() == before + 1


def test_list_entries_pages_and_filters(store: Store) -> None:
    """Keyset pages cover every entry once, in id order, with each filter applied (both
    backends); an entry added while paging past it does not shift the later pages."""
    store.create_bank("a")
    store.create_bank("b")
    store.add_entries("a", [NewEntry("pdq", _pdq(n), f"a-{n}") for n in range(1, 8)])
    store.add_entries("b", [NewEntry("pdq", _pdq(1), "b-1"), NewEntry("md5", bytes(16), "b-2")])
    store.set_disabled("a", EntrySelector(external_ids=["a-2", "a-5"]), True, "fp")

    seen: list[str | None] = []
    query = EntryQuery(banks=["a"], limit=3)
    pages = 0
    while True:
        page = store.list_entries(query)
        pages += 1
        seen.extend(e.external_id for e in page.entries)
        if pages == 1:
            store.add_entries("b", [NewEntry("pdq", _pdq(99), "b-99")])  # after this page
        if not page.next_after_id:
            break
        query = replace(query, after_id=decode_page_token(encode_page_token(page.next_after_id)))
    assert seen == [f"a-{n}" for n in range(1, 8)] and pages == 3

    def ids(**filters: Any) -> list[str | None]:
        return [e.external_id for e in store.list_entries(EntryQuery(**filters)).entries]

    assert ids(hash=("pdq", _pdq(1))) == ["a-1", "b-1"]
    assert ids(external_id="b-2") == ["b-2"]
    assert ids(banks=["a"], disabled=True) == ["a-2", "a-5"]
    assert ids(banks=["b"], disabled=False) == ["b-1", "b-2", "b-99"]
    assert ids(banks=["a", "b"], hash=("md5", bytes(16))) == ["b-2"]
    assert ids(banks=["a"], external_id="b-1") == []
    full = store.list_entries(EntryQuery(banks=["a"], limit=7))
    assert len(full.entries) == 7 and full.next_after_id == 0  # exactly one page: no next
    disabled = store.list_entries(EntryQuery(external_id="a-5")).entries[0]
    assert (disabled.disabled, disabled.disabled_reason, disabled.bank) == (True, "fp", "a")
    with pytest.raises(NotFoundError, match=r"no bank named 'nope'"):
        store.list_entries(EntryQuery(banks=["nope"]))
    with pytest.raises(HashsvcError, match=r"page size 0 is out of range"):
        store.list_entries(EntryQuery(limit=0))


@pytest.mark.parametrize("token", ["x", "ZTE6YWJj", "!!!", "e1:5"])
def test_a_forged_page_token_is_refused(token: str) -> None:
    with pytest.raises(HashsvcError, match=r"invalid page token"):
        decode_page_token(token)
