"""How exchange syncs went, kept in the store by whatever ran them: on every store backend,
in `indexer exchange status`, and as metrics exported by a running server (the sync ran in
another process, the CLI)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.store import Store
from hashsvc.store.exchange_model import DEFAULT_ALERT_AFTER
from indexer.exchanges.sync import sync_bank
from tests.conftest import run_indexer
from tests.server_process import ServerProcess


def _write_list(path: Path, numbers: range | list[int]) -> None:
    path.write_text("algorithm,hash,external_id\n"
                    + "".join(f"md5,{n.to_bytes(16, 'big').hex()},item-{n}\n" for n in numbers))


def test_syncs_record_success_failure_and_counts_without_a_revision(
    any_store: Store, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(5))
    any_store.create_bank("tat")
    any_store.bind_exchange("tat", "file", {"source": str(listing)})
    [fresh] = any_store.exchange_health("tat")
    assert (fresh.last_success, fresh.errors, fresh.alert_after) == (None, 0, DEFAULT_ALERT_AFTER)
    assert not fresh.failing

    sync_bank(any_store, "tat")
    [ok] = any_store.exchange_health()
    assert (ok.fetched, ok.added, ok.deleted, ok.errors) == (5, 5, 0, 0)
    assert ok.last_success is not None and not ok.failing
    revision = any_store.revision()
    sync_bank(any_store, "tat")  # nothing new: its success is recorded, no entry revision
    assert any_store.revision() == revision
    assert any_store.exchange_health("tat")[0].last_success is not None

    listing.unlink()
    try:
        sync_bank(any_store, "tat")
        raise AssertionError("a sync of a missing list succeeded")
    except HashsvcError as err:
        problem = err.message
    [failed] = any_store.exchange_health("tat")
    assert failed.failing and failed.errors == 1 and failed.last_error == problem
    assert (failed.fetched, failed.added) == (5, 5)  # counts since binding, kept
    assert failed.last_success is not None  # the earlier success is kept beside the error

    any_store.set_exchange_alert_after("tat", 7200)
    [set_] = any_store.exchange_health("tat")
    assert set_.alert_after == 7200
    stamp = set_.last_success or set_.bound_at  # stale: its age against the bank's threshold
    assert not set_.stale(stamp + 7199) and set_.stale(stamp + 7201)
    try:
        any_store.set_exchange_alert_after("tat", 0)
        raise AssertionError("a zero threshold was accepted")
    except HashsvcError as err:
        assert "positive number of seconds" in err.message


def _gauges(server: ServerProcess, bank: str) -> dict[str, float]:
    """This bank's exchange samples: name (with the `change` label for entries) -> value."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(server.scrape()):
        for sample in family.samples:
            if sample.name.startswith("hashsvc_exchange_") and sample.labels.get("bank") == bank:
                assert set(sample.labels) <= {"bank", "exchange", "change"}  # never credentials
                assert sample.labels["exchange"] == "file"
                change = sample.labels.get("change")
                key = sample.name + (f":{change}" if change else "")
                assert key not in found, f"{key} exported twice"
                found[key] = sample.value
    return found


def _gauges_once(server: ServerProcess, bank: str, name: str, value: float,
                 scrapes: int = 400) -> dict[str, float]:
    """The bank's samples once `name` reads `value`: the server reads the store on each
    watcher pass, so a change shows a pass later (a bounded number of scrapes)."""
    for _ in range(scrapes):
        gauges = _gauges(server, bank)
        if gauges.get(name) == value:
            return gauges
        time.sleep(0.05)
    raise AssertionError(f"{name} never read {value} in {scrapes} scrapes: {gauges}")


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: one value per bank, not one per worker
def test_a_server_exports_what_a_cli_sync_recorded(
    home: DataHome, tmp_path: Path, workers: str
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(3))
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                "--alert-after", "36", "--credentials-env", "FEED_TOKEN", check=True)
    run_indexer(home, "exchange", "sync", "feed", check=True)
    with ServerProcess(home.root, "--workers", workers) as server:
        gauges = _gauges_once(server, "feed", "hashsvc_exchange_sync_errors", 0)
        assert gauges["hashsvc_exchange_entries:added"] == 3
        assert gauges["hashsvc_exchange_entries:fetched"] == 3
        assert gauges["hashsvc_exchange_entries:deleted"] == 0
        assert gauges["hashsvc_exchange_sync_alert_after_seconds"] == 36 * 3600
        assert gauges["hashsvc_exchange_sync_failing"] == 0
        assert gauges["hashsvc_exchange_sync_errors"] == 0
        assert gauges["hashsvc_exchange_last_success_timestamp_seconds"] > 0

        listing.unlink()  # the next sync fails, in another process than the server
        assert run_indexer(home, "exchange", "sync", "feed").returncode != 0
        gauges = _gauges_once(server, "feed", "hashsvc_exchange_sync_errors", 1)
        assert gauges["hashsvc_exchange_sync_failing"] == 1
        assert gauges["hashsvc_exchange_entries:added"] == 3


def test_status_shows_the_last_error_and_stale_like_the_alert(
    home: DataHome, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                check=True)
    [fresh] = [json.loads(line) for line in
               run_indexer(home, "exchange", "status", check=True).stdout.splitlines()]
    assert (fresh["stale"], fresh["errors"], fresh["alert_after_hours"]) == (False, 0, 24)

    assert run_indexer(home, "exchange", "sync", "feed").returncode != 0  # no list there
    # a threshold already passed (3.6 µs after binding): stale, said on stderr too
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                "--alert-after", "1e-9", check=True)
    shown = run_indexer(home, "exchange", "status", "feed", check=True)
    status = json.loads(shown.stdout)
    assert status["stale"] and status["errors"] == 1 and status["last_success"] is None
    assert str(listing) in status["last_error"]
    assert "feed: no successful sync for" in shown.stderr and "last error:" in shown.stderr
    assert "Traceback" not in shown.stderr
    bad = run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source",
                      str(listing), "--alert-after", "-1")
    assert bad.returncode != 0 and "--alert-after must be a positive number" in bad.stderr
    assert "Traceback" not in bad.stderr
