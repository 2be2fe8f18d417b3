"""The matcher against brute force, with planted neighbours at 0, t and t+1 bits."""

from __future__ import annotations

import numpy as np
import pytest

from hashsvc.errors import NotFoundError
from hashsvc.hashing.algorithms import PDQ, HashValue, get_algorithm
from hashsvc.home import DataHome
from hashsvc.matching.matcher import Matcher, Query
from hashsvc.snapshot import load_current, publish
from hashsvc.store import NewEntry, Store

THRESHOLD = PDQ.default_threshold  # the matcher's own constant: a drifted copy would hide bugs
RNG = np.random.default_rng(1234)


def _flip(code: bytes, bits: int) -> bytes:
    array = np.unpackbits(np.frombuffer(code, dtype=np.uint8))
    positions = RNG.choice(array.size, size=bits, replace=False)
    array[positions] ^= 1
    return np.packbits(array).tobytes()


def _flip_first(code: bytes, start: int, count: int) -> bytes:
    """Flip bits start..start+count-1: distances between such variants are exact."""
    array = np.unpackbits(np.frombuffer(code, dtype=np.uint8))
    array[start : start + count] ^= 1
    return np.packbits(array).tobytes()


def _matcher(store: Store, home: DataHome) -> Matcher:
    publish(store, home.snapshots_dir, force=True)
    return Matcher(load_current(home.snapshots_dir))


def _pdq(value: bytes) -> Query:
    return Query(HashValue("pdq", value))


def test_range_search_equals_brute_force_with_planted_neighbours(
    store: Store, home: DataHome
) -> None:
    store.create_bank("bank")
    haystack = [RNG.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(5000)]
    queries = [RNG.integers(0, 256, 32, dtype=np.uint8).tobytes() for _ in range(20)]
    planted = [_flip(q, d) for q in queries for d in range(0, THRESHOLD + 3)]
    haystack += planted
    store.add_entries("bank", [NewEntry("pdq", code, str(i)) for i, code in enumerate(haystack)])
    matcher = _matcher(store, home)

    codes = np.frombuffer(b"".join(haystack), dtype=np.uint8).reshape(-1, 32)
    for query in queries:
        q = np.frombuffer(query, dtype=np.uint8)
        distances = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
        expected = {str(i): int(d) for i, d in enumerate(distances) if d <= THRESHOLD}
        found = {m.external_id: m.distance for m in matcher.match([_pdq(query)]).matches}
        assert found == expected
        # Every planted distance 0..t is found, t+1 and t+2 are not.
        assert sorted(found.values())[: THRESHOLD + 1] == list(range(THRESHOLD + 1))


def test_per_bank_thresholds(store: Store, home: DataHome) -> None:
    base = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    store.create_bank("strict", thresholds={"pdq": 10})
    store.create_bank("loose", thresholds={"pdq": 40})
    store.create_bank("default")
    for bank in ("strict", "loose", "default"):
        store.add_entries(bank, [NewEntry("pdq", _flip(base, d), f"{bank}-{d}")
                                 for d in (10, 11, 31, 32, 40, 41)])
    matches = _matcher(store, home).match([_pdq(base)]).matches
    found = {m.external_id: m.threshold for m in matches}
    assert found == {"strict-10": 10, "loose-10": 40, "loose-11": 40, "loose-31": 40,
                     "loose-32": 40, "loose-40": 40, "default-10": 31, "default-11": 31,
                     "default-31": 31}


def test_entry_in_several_banks_is_reported_for_each(store: Store, home: DataHome) -> None:
    code = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    for bank in ("x", "y"):
        store.create_bank(bank, tags=[f"tag-{bank}"])
        store.add_entries(bank, [NewEntry("pdq", code, bank, {"bank": bank})])
    matches = _matcher(store, home).match([_pdq(code)]).matches
    assert [(m.bank, m.tags, m.metadata) for m in matches] == [
        ("x", ("tag-x",), {"bank": "x"}), ("y", ("tag-y",), {"bank": "y"})]


def test_bank_filter(store: Store, home: DataHome) -> None:
    code = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    for bank in ("x", "y"):
        store.create_bank(bank)
        store.add_entries(bank, [NewEntry("pdq", code)])
    matcher = _matcher(store, home)
    assert [m.bank for m in matcher.match([_pdq(code)], banks=["y"]).matches] == ["y"]
    with pytest.raises(NotFoundError, match=r"'nope' not in snapshot"):
        matcher.match([_pdq(code)], banks=["nope"])


def test_allowlist_suppresses_and_explains(store: Store, home: DataHome) -> None:
    code = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    store.create_bank("bad")
    store.create_bank("benign", kind="allowlist", thresholds={"pdq": 8})
    store.add_entries("bad", [NewEntry("pdq", code, "bad-1"), NewEntry("md5", bytes(16), "m")])
    store.add_entries("benign", [NewEntry("pdq", _flip_first(code, 0, 5), "fp-ticket-7")])
    matcher = _matcher(store, home)
    outcome = matcher.match([_pdq(code), Query(HashValue("md5", bytes(16)))])
    assert [m.external_id for m in outcome.matches] == ["m"]  # other algorithms unaffected
    assert [m.external_id for m in outcome.suppressed] == ["bad-1"]
    assert [m.external_id for m in outcome.allowlisted] == ["fp-ticket-7"]
    # 10 bits from the bad entry but 15 from the allowlisted one (threshold 8): reported.
    outcome = matcher.match([_pdq(_flip_first(code, 100, 10))])
    assert [m.external_id for m in outcome.matches] == ["bad-1"]
    assert outcome.allowlisted == [] and outcome.suppressed == []


def test_disabled_entries_do_not_match(store: Store, home: DataHome) -> None:
    from hashsvc.store import EntrySelector

    code = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    store.create_bank("bank")
    store.add_entries("bank", [NewEntry("pdq", code, "fp")])
    assert _matcher(store, home).match([_pdq(code)]).matches
    store.set_disabled("bank", EntrySelector(external_ids=["fp"]), True, "false positive")
    assert not _matcher(store, home).match([_pdq(code)]).matches


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_exact_kinds_match_by_equality(store: Store, home: DataHome, algorithm: str) -> None:
    width = get_algorithm(algorithm).bits // 8
    store.create_bank("bank")
    # Values ending in zero bytes guard against fixed-width string padding pitfalls.
    values = [bytes(width), bytes(width - 1) + b"\x01", b"\x01" + bytes(width - 1)]
    store.add_entries("bank", [NewEntry(algorithm, v, v.hex()) for v in values])
    matcher = _matcher(store, home)
    for value in values:
        matches = matcher.match([Query(HashValue(algorithm, value))]).matches
        assert [(m.external_id, m.distance) for m in matches] == [(value.hex(), 0)]
    assert not matcher.match([Query(HashValue(algorithm, b"\x02" * width))]).matches


def test_dihedral_variant_reported_and_best_distance_kept(store: Store, home: DataHome) -> None:
    code = RNG.integers(0, 256, 32, dtype=np.uint8).tobytes()
    store.create_bank("bank")
    store.add_entries("bank", [NewEntry("pdq", code, "known")])
    matcher = _matcher(store, home)
    queries = [Query(HashValue("pdq", _flip(code, 20)), "identity"),
               Query(HashValue("pdq", _flip(code, 3)), "rotate_90"),
               Query(HashValue("pdq", _flip(code, 3)), "flip_x")]
    (match,) = matcher.match(queries).matches
    assert (match.distance, match.query_transform) == (3, "rotate_90")
