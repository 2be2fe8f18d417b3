"""The flood guard: through the real server and client, counted in scans, never in seconds.

The module server counts over a window of 40 scans (`--flood-window 40`); its banks quarantine
an entry at 8 matches in the window and 10x its own rate, so each test drives a flood, or normal
traffic, with an exact number of scans.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hashsvc_client import Client, NotFound
from hashsvc_client.v1 import types_pb2
from prometheus_client.parser import text_string_to_metric_families

from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import Upload
from hashsvc.home import DataHome
from hashsvc.matching.matcher import Match
from hashsvc.scanner import ScanResult
from hashsvc.server.flood_guard import FloodGuard, Quarantine
from hashsvc.snapshot import publish
from hashsvc.store import EntrySelector, NewEntry, SqliteStore, Store
from hashsvc.store.flood import DEFAULT_SETTINGS, FloodSettings, Release
from tests.conftest import IMAGES, PHOTOS, run_indexer
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 40
SETTINGS = FloodSettings(min_matches=8, factor=10)
BRIDGE_EDIT = (IMAGES / "bridge-mods" / "blur-a-lot.jpg").read_bytes()
NORMAL = sorted(PHOTOS.glob("*.jpg"))[:12]  # each its own entry: the normal part of traffic
FLOODERS = sorted(PHOTOS.glob("*.jpg"))[12:15]  # one per test that floods

QUARANTINED = types_pb2.MATCH_STATUS_QUARANTINED
MATCHED = types_pb2.MATCH_STATUS_MATCHED


@pytest.fixture(scope="module")
def flood_home(tmp_path_factory: pytest.TempPathFactory) -> DataHome:
    home = DataHome(tmp_path_factory.mktemp("flood"))
    with SqliteStore(home.store_path) as store:
        store.create_bank("bridge")
        store.add_entries("bridge", [NewEntry("pdq", BRIDGE_PDQ, "bridge-orig")])
        store.create_bank("photos")
        store.add_entries("photos", [
            NewEntry("pdq", PDQ.compute(Upload(path.read_bytes())).value, path.name)
            for path in [*NORMAL, *FLOODERS]])
        for bank in ("bridge", "photos"):
            store.set_flood_guard(bank, SETTINGS)
        publish(store, home.snapshots_dir)
    return home


@pytest.fixture(scope="module")
def server(flood_home: DataHome) -> Iterator[ServerProcess]:
    with ServerProcess(flood_home.root, "--flood-window", str(WINDOW)) as process:
        yield process


@pytest.fixture(scope="module")
def scanner(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        yield client


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


def _statuses(client: Client, image: bytes, scans: int) -> list[int]:
    """The status of the image's one match in each of `scans` scans."""
    statuses: list[int] = []
    for _ in range(scans):
        (match,) = client.scan_image(image).matches
        statuses.append(int(match.status))
    return statuses


def _normal_traffic(client: Client, rounds: int = 2) -> None:
    """Every normal photo once per round (each matches its own entry): nothing floods."""
    for _ in range(rounds):
        for path in NORMAL:
            result = client.scan_image(path.read_bytes())
            assert result.matched, path.name
            assert [m.status for m in result.matches] == [MATCHED], path.name


def _quarantined_gauge(server: ServerProcess, bank: str) -> float:
    for family in text_string_to_metric_families(server.scrape()):
        for sample in family.samples:
            if sample.name == "hashsvc_flood_quarantined_entries" and sample.labels == {
                    "bank": bank}:
                return sample.value
    return 0.0


def _wait_for_gauge(server: ServerProcess, bank: str, value: float, polls: int = 600) -> None:
    """The watcher applies store changes on its next pass: a bounded number of scrapes."""
    for _ in range(polls):
        if _quarantined_gauge(server, bank) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"hashsvc_flood_quarantined_entries{{bank={bank!r}}} never {value}")


def _flood(client: Client, image: bytes) -> int:
    """Scan `image` until its entry is quarantined; the entry id. Fails unless it is exactly
    the `min_matches`-th match (the entry had no earlier matches on this server)."""
    statuses = _statuses(client, image, SETTINGS.min_matches)
    assert statuses == [MATCHED] * (SETTINGS.min_matches - 1) + [QUARANTINED]
    result = client.scan_image(image)
    assert not result.matched and result.matches[0].status == QUARANTINED
    return int(result.matches[0].entry_id)


def test_normal_traffic_is_not_quarantined_and_a_flood_is_at_min_matches(
    server: ServerProcess, scanner: Client, flood_home: DataHome,
) -> None:
    _normal_traffic(scanner, rounds=4)  # 48 scans: more than a window, 4 matches per entry
    assert _quarantined_gauge(server, "photos") == 0
    entry_id = _flood(scanner, BRIDGE_EDIT)
    assert _quarantined_gauge(server, "bridge") == 1
    _normal_traffic(scanner)  # the rest of the traffic is untouched
    # Hash-only scans of the flooding hash are held the same way.
    hashed = scanner.scan_hashes([("pdq", BRIDGE_PDQ)])
    assert not hashed.matched and hashed.matches[0].status == QUARANTINED

    records = [json.loads(line) for line in flood_home.root.joinpath("audit.jsonl")
               .read_text().splitlines()]
    (event,) = [r for r in records if r["event"] == "flood_quarantine"]
    assert (event["entry_id"], event["bank"], event["matches_in_window"],
            event["window_scans"]) == (entry_id, "bridge", SETTINGS.min_matches, WINDOW)
    assert event["query_hash"].startswith("pdq:") and len(event["query_hash"]) == 4 + 64
    held = [m for r in records if r["event"] == "scan" for m in r["matches"]
            if m["status"] == "quarantined"]
    assert held and all(m["entry_id"] == entry_id for m in held)
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(server.scrape()) for s in f.samples}
    assert samples[("hashsvc_flood_quarantined_matches_total", (("bank", "bridge"),))] >= 2


def test_the_alert_rule_fires_on_the_quarantine_gauge(server: ServerProcess,
                                                      scanner: Client) -> None:
    """The rule's selector, evaluated on a live scrape: no promtool here, so the expression is
    held to the one shape this test can evaluate (`max by (bank) (GAUGE) > 0`)."""
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    (rule,) = [r for g in alerts["groups"] for r in g["rules"]
               if r["alert"] == "HashsvcFloodQuarantine"]
    assert " ".join(rule["expr"].split()) == (
        "max by (instance, bank) (hashsvc_flood_quarantined_entries) > 0")
    _wait_for_gauge(server, "bridge", 1)  # held since the first test quarantined it
    assert "{{ $labels.bank }}" in rule["annotations"]["summary"]


def test_release_by_rpc_lifts_the_quarantine_and_the_same_flood_stays_matched(
    server: ServerProcess, scanner: Client, admin: Client,
) -> None:
    (held,) = scanner.scan_image(BRIDGE_EDIT).matches
    assert held.status == QUARANTINED
    released = admin.release_entry(held.entry_id, reason="a real image, ticket 7")
    assert released.entry_id == held.entry_id and released.store_revision > 0
    # Lifted on the answering worker before the call returns; the flood goes on, matched.
    assert _statuses(scanner, BRIDGE_EDIT, 3 * WINDOW) == [MATCHED] * (3 * WINDOW)
    _wait_for_gauge(server, "bridge", 0)
    with pytest.raises(NotFound):
        admin.release_entry(10**9)


def test_release_from_the_indexer_reaches_the_server(
    server: ServerProcess, scanner: Client, flood_home: DataHome,
) -> None:
    image = FLOODERS[0].read_bytes()
    entry_id = _flood(scanner, image)
    done = run_indexer(flood_home, "entries", "release", str(entry_id), "--reason", "fine")
    assert done.returncode == 0, done.stderr
    assert f"released entry {entry_id}" in done.stderr
    for _ in range(600):  # the server's next watcher pass: a bounded number of scans
        if scanner.scan_image(image).matched:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the release never reached the server")
    missing = run_indexer(flood_home, "entries", "release", "999999")
    assert missing.returncode != 0 and "no entry with id 999999" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_disable_ends_a_quarantine(server: ServerProcess, scanner: Client,
                                   admin: Client) -> None:
    image = FLOODERS[1].read_bytes()
    _flood(scanner, image)
    _wait_for_gauge(server, "photos", 1)
    assert admin.set_entries_disabled("photos", external_ids=[FLOODERS[1].name],
                                      reason="near-blank, added by mistake") == 1
    assert not scanner.scan_image(image).matches  # not matched at all, as any disabled entry
    _wait_for_gauge(server, "photos", 0)


def test_bank_thresholds_off_and_unknown_settings_are_refused(
    server: ServerProcess, scanner: Client, admin: Client, flood_home: DataHome,
) -> None:
    done = run_indexer(flood_home, "bank", "update", "photos", "--flood-min-matches", "0")
    assert done.returncode == 0 and "flood guard off" in done.stderr, done.stderr
    # Any admin call brings its worker up to the store before it returns (here: releasing a
    # normal entry, which changes nothing), so no waiting on the watcher.
    (normal,) = scanner.scan_image(NORMAL[0].read_bytes()).matches
    admin.release_entry(normal.entry_id)
    image = FLOODERS[2].read_bytes()
    assert _statuses(scanner, image, 2 * WINDOW) == [MATCHED] * (2 * WINDOW)
    bad = run_indexer(flood_home, "bank", "update", "photos", "--flood-factor", "0.5")
    assert bad.returncode != 0 and "factor must be 1 to 1e6" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---- the store half, on both backends --------------------------------------------------------


def test_store_keeps_thresholds_and_releases(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.add_entries("b", [NewEntry("md5", bytes(16), "x")])
    (entry,) = any_store.find_entries("b", EntrySelector(external_ids=["x"]))
    assert any_store.flood_guard_settings() == {}
    before = any_store.revision()
    any_store.set_flood_guard("b", FloodSettings(5, 3.5))
    assert any_store.flood_guard_settings() == {"b": FloodSettings(5, 3.5)}
    any_store.set_flood_guard("b", FloodSettings(0, 3.5))
    assert any_store.flood_guard_settings()["b"].enabled is False
    released = any_store.release_entry(entry.id, "ticket 1")
    assert released.revision == any_store.revision() > before
    assert any_store.flood_releases() == [released]
    assert any_store.flood_releases(released.revision) == []
    with pytest.raises(NotFoundError):
        any_store.release_entry(entry.id + 1000)
    with pytest.raises(HashsvcError, match="factor must be 1 to 1e6"):
        any_store.set_flood_guard("b", FloodSettings(5, 0.5))
    with pytest.raises(NotFoundError):
        any_store.set_flood_guard("nope", DEFAULT_SETTINGS)


# ---- the guard's arithmetic, scan by scan ------------------------------------------------------


def _match(entry_id: int, bank: str = "b") -> Match:
    return Match(bank=bank, bank_kind="match", entry_id=entry_id, external_id=None,
                 algorithm="md5", distance=0, threshold=0, query_transform="identity", tags=(),
                 metadata=None)


def _scan(guard: FloodGuard, *entry_ids: int) -> list[bool]:
    result = ScanResult("v", [], [_match(e) for e in entry_ids])
    return [m.quarantined for m in guard.screen(result).matches]


def test_a_steady_entry_is_never_quarantined_but_ten_times_its_rate_is() -> None:
    events: list[Quarantine] = []
    guard = FloodGuard(window=100, on_quarantine=events.append)
    guard.configure({"b": FloodSettings(min_matches=20, factor=10)})
    for scan in range(1000):  # entry 1 matches every 10th scan: 10 per window, steadily
        assert _scan(guard, *([1] if scan % 10 == 0 else [])) in ([], [False])
    held = [_scan(guard, 1)[0] for _ in range(200)]  # now every scan: 100 per window
    first = held.index(True)
    assert not any(held[:first]) and all(held[first:])
    # Quarantined at 10x its history's 10 per window = 100 in the window; the window held 10
    # of the old matches (1 per 10 scans in the last 100) when the flood began.
    assert 85 <= first + 1 <= 100, first
    (event,) = events
    assert event.in_window >= 10 * event.expected and event.window == 100


def test_a_release_resets_the_baseline_and_a_start_learns_released_entries() -> None:
    guard = FloodGuard(window=50)
    guard.configure({"b": FloodSettings(min_matches=5, factor=4)})
    first = [q for _ in range(5) for q in _scan(guard, 1)]
    assert first == [False] * 4 + [True]  # no history on this server: min_matches alone
    assert guard.release([Release(1, 9, 0.0, None)]) == [1]
    assert guard.quarantined() == {}
    assert not any(q for _ in range(500) for q in _scan(guard, 1))  # the same flood: matched
    fresh = FloodGuard(window=50)  # a server started after the release
    fresh.configure({"b": FloodSettings(min_matches=5, factor=4)})
    fresh.release([Release(1, 9, 0.0, None)])
    assert not any(q for _ in range(500) for q in _scan(fresh, 1))  # learnt, not quarantined
    other = [q for _ in range(5) for q in _scan(fresh, 2)]  # an unreleased entry still is
    assert other == [False] * 4 + [True]
    fresh.forget([2])
    assert fresh.quarantined() == {}


def test_a_batch_of_lookups_counts_as_as_many_uploads() -> None:
    """A ScanHashes call of unrelated lookups: its matches are a share of its hashes, not one
    per call (one popular entry per batch would otherwise look like a flood)."""
    guard = FloodGuard(window=100)
    guard.configure({"b": FloodSettings(min_matches=5, factor=10)})
    for _ in range(50):  # one match of entry 1 in each batch of 60 uploads: 1-2 per window
        result = guard.screen(ScanResult("v", [], [_match(1)]), uploads=60)
        assert not result.matches[0].quarantined
    single = [q for _ in range(5) for q in _scan(guard, 2)]  # one upload per call
    assert single == [False] * 4 + [True]


def test_bench_flood_smoke_quarantines_the_hot_entry_only() -> None:
    """loadtests/bench_flood.py end to end on a short stream (its figures are in the README)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_flood.py"), "--scans", "400",
         "--window", "100", "--known", "20", "--unknown", "20", "--onset", "0.5",
         "--hot-share", "0.3", "--min-matches", "10", "--json"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    hot = report["guard_on"]
    # At the 10th match in the window: the hot photo is also a (rare) known upload before the
    # flood, so up to 10 of them are since the onset.
    assert 5 <= hot["hot_matches_until_quarantined"] <= 10 and hot["false_quarantines"] == []
    assert report["busiest_normal_entry_in_a_window"] < 10
    assert report["cpu_us_per_scan_on"] > 0 and report["guard_alone_us_per_scan"] > 0

