"""Exchange bindings and pages of upstream changes, on every store backend (`any_store`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hashsvc.errors import HashsvcError, NotFoundError, WriterBusyError
from hashsvc.store import EntryQuery, EntrySelector, NewEntry, Store
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from hashsvc.store.sql_base import Replayable


def _md5(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _up(n: int, *tags: str) -> UpstreamEntry:
    return UpstreamEntry(f"u{n}", "md5", _md5(n), tags=tags)


def test_binding_keeps_a_credentials_reference_and_its_checkpoint(any_store: Store) -> None:
    any_store.create_bank("ncmec")
    with pytest.raises(NotFoundError, match="not bound"):
        any_store.exchange_bindings("ncmec")
    bound = any_store.bind_exchange("ncmec", "file", {"source": "/x.csv"},
                                    Credentials("env", "NCMEC_TOKEN"))
    assert (bound.exchange, bound.config, bound.checkpoint) == ("file", {"source": "/x.csv"}, None)
    assert bound.credentials == Credentials("env", "NCMEC_TOKEN")
    any_store.apply_exchange_page("ncmec", ExchangePage([_up(1)], "c1", more=False), None)
    # the same exchange and config again (say, a new credentials file): the sync resumes
    again = any_store.bind_exchange("ncmec", "file", {"source": "/x.csv"},
                                    Credentials("file", "/run/secrets/ncmec"))
    assert again.checkpoint == "c1"
    # another source: it starts from the beginning
    moved = any_store.bind_exchange("ncmec", "file", {"source": "/y.csv"})
    assert (moved.checkpoint, moved.credentials) == (None, None)
    assert [b.bank for b in any_store.exchange_bindings()] == ["ncmec"]
    with pytest.raises(HashsvcError, match="credentials source"):
        Credentials("vault", "x")


def test_pages_add_update_and_delete_as_live_entry_changes(any_store: Store) -> None:
    any_store.create_bank("tat")
    any_store.bind_exchange("tat", "file", {})
    before = any_store.revision()
    result = any_store.apply_exchange_page(
        "tat", ExchangePage([_up(1, "terror"), _up(2), _up(2)], "c1", more=True), None)
    assert (result.added, result.unchanged) == (2, 1)  # an id listed twice is one entry
    changes = any_store.changes_since(before)
    assert {row[4] for row in changes.active} == {"u1", "u2"}
    [entry] = any_store.find_entries("tat", EntrySelector(external_ids=["u1"]))
    assert entry.metadata == {"exchange": "file", "upstream_id": "u1",
                              "upstream_tags": ["terror"]}
    [seen] = any_store.entry_provenance(entry.id)
    assert (seen.exchange, seen.upstream_id, seen.tags) == ("file", "u1", ("terror",))
    assert seen.first_seen == seen.last_seen

    mark = any_store.revision()
    result = any_store.apply_exchange_page(
        "tat", ExchangePage([_up(1, "terror", "verified"), _up(2)], "c2", more=False,
                            deletions=["u2", "never-seen"]), "c1")
    assert (result.added, result.updated, result.deleted) == (0, 1, 1)
    changes = any_store.changes_since(mark)
    assert changes.changed >= {entry.id}
    assert [e.external_id for e in any_store.find_entries(
        "tat", EntrySelector(hashes=[("md5", _md5(2))]))] == []
    [seen] = any_store.entry_provenance(entry.id)
    assert seen.tags == ("terror", "verified") and seen.last_seen >= seen.first_seen
    listed = any_store.entries_provenance([entry.id, entry.id + 1000])  # one query a page
    assert [(p.entry_id, p.upstream_id) for p in listed] == [(entry.id, "u1")]
    assert any_store.entries_provenance([]) == []
    assert any_store.exchange_bindings("tat")[0].checkpoint == "c2"


def test_a_listing_sweeps_what_it_no_longer_holds(any_store: Store) -> None:
    any_store.create_bank("list")
    any_store.bind_exchange("list", "file", {})
    any_store.add_entries("list", [NewEntry("md5", _md5(9), "imported")])
    any_store.apply_exchange_page(
        "list", ExchangePage([_up(1), _up(2)], "a1", more=True, listing="A"), None)
    any_store.apply_exchange_page(
        "list", ExchangePage([_up(3)], "a2", more=False, listing="A", ends_listing=True), "a1")
    result = any_store.apply_exchange_page(
        "list", ExchangePage([_up(1), _up(3)], "b1", more=False, listing="B", ends_listing=True),
        "a2")
    assert (result.unchanged, result.deleted) == (2, 1)
    names = sorted(str(e.external_id) for e in any_store.find_entries(
        "list", EntrySelector(hashes=[("md5", _md5(n)) for n in (1, 2, 3, 9)])))
    assert names == ["imported", "u1", "u3"]  # an entry imported by hand is not the exchange's


def test_a_stale_checkpoint_or_a_bad_hash_applies_nothing(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.bind_exchange("b", "file", {})
    any_store.apply_exchange_page("b", ExchangePage([_up(1)], "c1", more=True), None)
    with pytest.raises(WriterBusyError, match="checkpoint moved"):
        any_store.apply_exchange_page("b", ExchangePage([_up(2)], "c2", more=False), None)
    bad = UpstreamEntry("u3", "md5", b"short")
    with pytest.raises(HashsvcError, match="md5"):
        any_store.apply_exchange_page("b", ExchangePage([_up(2), bad], "c2", more=False), "c1")
    assert any_store.get_bank("b").entry_count == 1
    assert any_store.exchange_bindings("b")[0].checkpoint == "c1"
    any_store.delete_bank("b")
    assert any_store.exchange_bindings() == []


def test_an_entry_removed_by_hand_comes_back_with_its_listing(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.bind_exchange("b", "file", {})
    any_store.apply_exchange_page("b", ExchangePage([_up(1), _up(2)], "c1", more=False), None)
    [entry] = any_store.find_entries("b", EntrySelector(external_ids=["u2"]))
    assert any_store.remove_entries("b", EntrySelector(ids=[entry.id])) == 1
    result = any_store.apply_exchange_page("b", ExchangePage([_up(2)], "c2", more=False), "c1")
    assert (result.added, result.unchanged) == (1, 0)
    [back] = any_store.find_entries("b", EntrySelector(external_ids=["u2"]))
    assert [p.upstream_id for p in any_store.entry_provenance(back.id)] == ["u2"]


def test_entries_are_found_by_exchange_and_upstream_id(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.bind_exchange("b", "ncmec", {})
    any_store.add_entries("b", [NewEntry("md5", _md5(9), "by-hand")])
    any_store.apply_exchange_page("b", ExchangePage([_up(1), _up(2)], "c1", more=False), None)
    from_ncmec = any_store.list_entries(EntryQuery(banks=("b",), exchange="ncmec")).entries
    assert [e.external_id for e in from_ncmec] == ["u1", "u2"]
    [one] = any_store.list_entries(EntryQuery(upstream_id="u2")).entries
    assert one.hash == _md5(2)
    assert any_store.list_entries(EntryQuery(exchange="stopncii")).entries == []
    with pytest.raises(HashsvcError, match="invalid exchange type"):
        any_store.list_entries(EntryQuery(exchange="no such").checked())


def test_a_page_replays_what_a_re_run_write_had_already_taken() -> None:
    """A PostgreSQL write re-run after a lost connection iterates the page's upserts again:
    it must see them all, from the first, though they come from a generator read once."""
    taken: list[int] = []

    def upstream() -> Iterator[int]:
        for n in range(4):
            taken.append(n)
            yield n

    replayable = Replayable(upstream())
    first = iter(replayable)
    assert [next(first), next(first)] == [0, 1]  # the first attempt dies after two
    assert list(replayable) == [0, 1, 2, 3] and list(replayable) == [0, 1, 2, 3]
    assert taken == [0, 1, 2, 3]  # each read from the source once
