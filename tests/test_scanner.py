"""The scan use case shared by the server and the indexer."""

from __future__ import annotations

import pytest

from hashsvc.errors import NotLoadedError
from hashsvc.hashing.algorithms import PDQ, HashValue
from hashsvc.hashing.imaging import Upload
from hashsvc.home import DataHome
from hashsvc.scanner import Scanner, ScanOptions
from hashsvc.snapshot import load_current, publish
from hashsvc.store import NewEntry, Store
from tests.conftest import BRIDGE_ORIGINAL, IMAGES


def _scanner(store: Store, home: DataHome) -> Scanner:
    publish(store, home.snapshots_dir, force=True)
    return Scanner(load_current(home.snapshots_dir))


def test_low_quality_hashes_are_reported_not_matched(store: Store, home: DataHome) -> None:
    flat = (IMAGES / "misc" / "small.jpg").read_bytes()
    store.create_bank("bank")
    store.add_entries("bank", [NewEntry("pdq", PDQ.compute(Upload(flat)).value, "flat")])
    scanner = _scanner(store, home)
    result = scanner.scan_image(flat)
    (pdq,) = [h for h in result.hashes if h.hash.algorithm == "pdq"]
    assert pdq.low_quality and not result.matched
    opted_in = scanner.scan_image(flat, ScanOptions(match_low_quality=True))
    assert [m.external_id for m in opted_in.matches] == ["flat"]


def test_scan_hashes_is_the_same_match_without_the_image(store: Store, home: DataHome) -> None:
    value = PDQ.compute(Upload(BRIDGE_ORIGINAL.read_bytes())).value
    store.create_bank("bank")
    store.add_entries("bank", [NewEntry("pdq", value, "orig")])
    scanner = _scanner(store, home)
    by_hash = scanner.scan_hashes([HashValue("pdq", value)])
    by_image = scanner.scan_image(BRIDGE_ORIGINAL.read_bytes())
    assert by_hash.matches == by_image.matches and by_hash.matched
    assert by_hash.timings.decode_seconds == 0 and by_image.timings.decode_seconds > 0


def test_default_algorithms_follow_the_snapshot(store: Store, home: DataHome) -> None:
    store.create_bank("bank")
    store.add_entries("bank", [NewEntry("md5", bytes(16))])
    result = _scanner(store, home).scan_image(BRIDGE_ORIGINAL.read_bytes())
    assert [h.hash.algorithm for h in result.hashes] == ["pdq", "md5"]
    explicit = _scanner(store, home).scan_image(
        BRIDGE_ORIGINAL.read_bytes(), ScanOptions(algorithms=("sha256",))
    )
    assert [h.hash.algorithm for h in explicit.hashes] == ["sha256"]
    assert explicit.timings.decode_seconds == 0  # exact kinds never decode


def test_swap_changes_what_is_served(store: Store, home: DataHome) -> None:
    scanner = Scanner()
    with pytest.raises(NotLoadedError):
        scanner.scan_hashes([HashValue("md5", bytes(16))])
    store.create_bank("bank")
    publish(store, home.snapshots_dir)
    scanner.swap(load_current(home.snapshots_dir))
    assert not scanner.scan_hashes([HashValue("md5", bytes(16))]).matched
    store.add_entries("bank", [NewEntry("md5", bytes(16))])
    publish(store, home.snapshots_dir)
    scanner.swap(load_current(home.snapshots_dir))
    assert scanner.scan_hashes([HashValue("md5", bytes(16))]).matched
