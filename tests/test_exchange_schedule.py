"""Scheduled exchange syncs in the admin service (hashsvc/server/exchange_schedule.py): one
server per round on a shared store, failures recorded and survived, `--every` on the binding,
and a sync that stops between pages when asked."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from hashsvc.audit import AuditLog
from hashsvc.home import DataHome
from hashsvc.server.exchange_schedule import ExchangeScheduler
from hashsvc.store import Entry, Store, open_store
from hashsvc.store.exchange_model import Credentials, ExchangePage
from hashsvc.store.listing import EntryQuery
from indexer.exchanges import EXCHANGES, Exchange
from indexer.exchanges.file_list import FileListExchange
from indexer.exchanges.sync import sync_bank
from tests.conftest import run_indexer
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess

POLLS = 1200  # store reads, 0.1 s apart: a hang guard, never a timing claim


def _write_list(path: Path, numbers: range | list[int]) -> None:
    path.write_text("algorithm,hash,external_id\n"
                    + "".join(f"md5,{n.to_bytes(16, 'big').hex()},item-{n}\n" for n in numbers))


def _entries(store: Store, bank: str) -> list[Entry]:
    return store.list_entries(EntryQuery(banks=[bank], limit=1000)).entries


def _external_ids(store: Store, bank: str) -> list[str]:
    return sorted(e.external_id or "" for e in _entries(store, bank))


def _until(what: str, check: Any) -> Any:
    for _ in range(POLLS):
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {POLLS} polls")


def _sync_records(*servers: ServerProcess) -> list[dict[str, Any]]:
    records = []
    for server in servers:
        path = server.home / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        records += [r | {"server": server.home.name} for r in map(json.loads, lines)
                    if r["event"] == "exchange_sync"]
    return records


def test_two_admin_servers_sync_each_round_once(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    listing = tmp_path / "list.csv"
    _write_list(listing, range(5))
    with open_store(url) as store:
        store.create_bank("feed")
        store.bind_exchange("feed", "file", {"source": str(listing), "every": 1})
        flags = ("--role", "admin", "--store", url)
        with ServerProcess(tmp_path / "a", *flags) as one, \
                ServerProcess(tmp_path / "b", *flags) as two:
            expected = [f"item-{n}" for n in range(5)]
            _until("the first sync", lambda: _external_ids(store, "feed") == expected)
            _write_list(listing, [*range(2, 5), *range(10, 14)])  # 2 gone, 4 new upstream
            expected = sorted(f"item-{n}" for n in [*range(2, 5), *range(10, 14)])
            _until("the change", lambda: _external_ids(store, "feed") == expected)
            # a few more rounds, with nothing new, both servers competing for each
            rounds = len(_sync_records(one, two))
            _until("more rounds", lambda: len(_sync_records(one, two)) >= rounds + 4)
        records = _sync_records(one, two)
        [health] = store.exchange_health("feed")
        entries = _entries(store, "feed")
    assert len(entries) == len({e.hash for e in entries}) == 7  # nothing applied twice
    assert all(r["outcome"] == "ok" for r in records), records
    rounds_synced = [r["after"] for r in records]
    assert len(rounds_synced) == len(set(rounds_synced)), \
        f"a round synced by two servers: {records}"
    assert sum(r["added"] for r in records) == 9 and sum(r["deleted"] for r in records) == 2
    assert (health.added, health.deleted, health.errors) == (9, 2, 0)
    assert health.last_success is not None and max(
        r["after"] or 0 for r in records) <= health.last_success


def test_a_failing_sync_is_recorded_and_the_server_keeps_syncing(
    home: DataHome, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"  # not there yet: the first rounds fail
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                check=True)
    with ServerProcess(home.root, "--exchange-sync-every", "1") as server, \
            open_store(home.store_path) as store:
        _until("a failed round", lambda: store.exchange_health("feed")[0].errors >= 1)
        assert not _external_ids(store, "feed")
        _write_list(listing, range(3))
        _until("a sync after the failures",
               lambda: _external_ids(store, "feed") == [f"item-{n}" for n in range(3)])
        assert server.running
    records = _sync_records(server)
    failed = [r for r in records if r["outcome"] == "failed"]
    assert failed and "list.csv" in failed[0]["error"]
    assert records[-1]["outcome"] == "ok" and records[-1]["added"] == 3
    assert any(r.get("message") == "scheduled exchange sync failed" for r in server.records())


def test_no_schedule_no_sync(home: DataHome, tmp_path: Path) -> None:
    """A bank bound without --every on a server without a default is left to the CLI, and
    `--no-exchange-sync` turns the schedule off whatever the bank or the default says: that
    server syncs nothing while, beside it on the same store, another runs two rounds."""
    listing = tmp_path / "list.csv"
    _write_list(listing, range(2))
    run_indexer(home, "bank", "create", "manual", check=True)
    run_indexer(home, "bank", "create", "timed", check=True)
    for bank in ("manual", "timed"):
        run_indexer(home, "exchange", "bind", bank, "--type", "file", "--source", str(listing),
                    *(["--every", "1s"] if bank == "timed" else []), check=True)
    quiet_audit = tmp_path / "quiet-audit.jsonl"
    with ServerProcess(home.root, "--no-exchange-sync", "--exchange-sync-every", "1",
                       "--audit-log", str(quiet_audit)), \
            ServerProcess(home.root, keys={}) as server, open_store(home.store_path) as store:
        _until("two rounds of the scheduled bank", lambda: len(_sync_records(server)) >= 2)
        assert _external_ids(store, "timed") == ["item-0", "item-1"]
        assert not _external_ids(store, "manual")
    assert {r["bank"] for r in _sync_records(server)} == {"timed"}
    assert not quiet_audit.exists() or "exchange_sync" not in quiet_audit.read_text()


def test_every_is_kept_and_keeps_the_checkpoint(home: DataHome, tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(2))
    run_indexer(home, "bank", "create", "feed", check=True)
    bind = ("exchange", "bind", "feed", "--type", "file", "--source", str(listing))
    run_indexer(home, *bind, "--every", "6h", check=True)
    run_indexer(home, "exchange", "sync", "feed", check=True)
    with open_store(home.store_path) as store:
        [before] = store.exchange_bindings("feed")
    assert before.config["every"] == 6 * 3600 and before.checkpoint is not None

    run_indexer(home, *bind, "--every", "15m", check=True)  # a new schedule: same checkpoint
    run_indexer(home, *bind, check=True)  # without --every: the schedule is kept
    with open_store(home.store_path) as store:
        [after] = store.exchange_bindings("feed")
    assert after.config["every"] == 15 * 60 and after.checkpoint == before.checkpoint
    assert after.sync_every(3600) == 900

    run_indexer(home, *bind, "--every", "off", check=True)
    with open_store(home.store_path) as store:
        [off] = store.exchange_bindings("feed")
    assert off.sync_every(3600) == 0  # off even with a server default

    for bad in ("0.5x", "-3m", "soon", "nan", ""):
        result = run_indexer(home, *bind, f"--every={bad}")
        assert result.returncode != 0 and "--every must be a duration" in result.stderr, bad
        assert "Traceback" not in result.stderr


def test_a_sync_asked_to_stop_ends_between_pages_and_resumes(
    store: Store, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(6))
    store.create_bank("feed")
    store.bind_exchange("feed", "file", {"source": str(listing), "page_size": 2})
    asked: list[int] = []

    def stop_after_two_pages() -> bool:
        asked.append(1)
        return len(asked) > 2

    first = sync_bank(store, "feed", stop=stop_after_two_pages)
    assert first.pages == 2 and len(_external_ids(store, "feed")) == 4
    rest = sync_bank(store, "feed")
    assert rest.pages == 1 and rest.totals.added == 2
    assert _external_ids(store, "feed") == [f"item-{n}" for n in range(6)]


def test_a_server_skips_the_round_another_holds_and_finds_it_done(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Deterministic, in one process: two schedulers on separate connections to one PostgreSQL
    store. While the first syncs (inside its exchange's fetch), the second's round must skip
    (the lock is held); after it, the second finds the bank no longer due (the first's sync
    is in the store), so the round was synced once."""
    listing = tmp_path / "list.csv"
    _write_list(listing, range(3))
    url = postgres.new_database()
    during: list[list[str]] = []
    stopping = threading.Event()
    with open_store(url) as one_store, open_store(url) as two_store:
        two = ExchangeScheduler(two_store, AuditLog(tmp_path / "two.jsonl"), 0, stopping)

        def racing(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
            listed = FileListExchange(config, credentials)

            class Racing:
                def fetch(self, checkpoint: str | None) -> ExchangePage:
                    during.append(two.run_round())  # the other server's round, meanwhile
                    return listed.fetch(checkpoint)

            return Racing()

        EXCHANGES["racing"] = racing
        try:
            one_store.create_bank("feed")
            one_store.bind_exchange("feed", "racing", {"source": str(listing), "every": 3600})
            one = ExchangeScheduler(one_store, AuditLog(tmp_path / "one.jsonl"), 0, stopping)
            assert one.run_round() == ["feed"]
            assert during and all(round_ == [] for round_ in during)
            assert two.run_round() == []  # not due: synced a moment ago, by the other
        finally:
            del EXCHANGES["racing"]
        assert _external_ids(one_store, "feed") == [f"item-{n}" for n in range(3)]
    assert not (tmp_path / "two.jsonl").exists()
    [record] = map(json.loads, (tmp_path / "one.jsonl").read_text().splitlines())
    assert (record["bank"], record["added"], record["after"]) == ("feed", 3, None)
