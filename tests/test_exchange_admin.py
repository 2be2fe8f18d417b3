"""ListExchangeBindings and SyncExchange through the real server, client and HTTP API, against a
loopback stand-in of a `url` exchange (a hash list over HTTP): a sync now applies the list and
is recorded like a scheduled one, a sync still running holds the turn, another process's sync
lock (PostgreSQL) refuses one, and bad requests change nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hashsvc_client import Client, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from hashsvc_client.v1 import admin_pb2

from hashsvc.keys import add_key
from hashsvc.server.exchange_schedule import sync_turn
from hashsvc.store import open_store
from tests.http_client import http
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess
from tests.stand_in import StandInHandler, serving

POLLS = 600  # calls, 0.1 s apart: a hang guard, never a timing claim


def hash_list(numbers: range | list[int]) -> bytes:
    return ("algorithm,hash,external_id\n" + "".join(
        f"md5,{n.to_bytes(16, 'big').hex()},item-{n}\n" for n in numbers)).encode()


class ListHandler(StandInHandler):
    """Serves `body` as a CSV hash list once `gate` is open (it is, unless a test closes it)."""

    content_type = "text/csv"
    body: ClassVar[bytes] = hash_list(range(3))
    gate: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        self.gate.wait(timeout=120)  # a hang guard: every test opens it again
        self._answer(200, self.body)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    ListHandler.gate.set()
    with serving(ListHandler) as base:
        yield f"{base}/list.csv"


@pytest.fixture(scope="module")
def server(stand_in: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("exchange-admin")
    with open_store(home / "store.sqlite") as store:
        for bank in ("feed", "plain", "other"):
            store.create_bank(bank)
        store.bind_exchange("feed", "url", {"source": stand_in})
        store.bind_exchange("other", "url", {"source": stand_in, "every": 3600})
    scoped = add_key(home / "keys.toml", "other-admin", ["admin"], ["other"])
    with ServerProcess(home) as process:
        process.keys["other-admin"] = scoped
        yield process


def _client(server: ServerProcess, key: str = "admin") -> Client:
    return Client(server.target, api_key=server.keys[key])


def _base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _external_ids(client: Client, bank: str) -> list[str]:
    return sorted(e.external_id for e in client.iter_entries(banks=[bank]))


def _audit(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (server.home / "audit.jsonl").read_text().splitlines()]


def _binding(client: Client, bank: str) -> admin_pb2.ExchangeBindingStatus:
    (binding,) = client.list_exchange_bindings(bank)
    return binding


def test_sync_now_applies_the_list_and_is_recorded_like_a_scheduled_sync(
    server: ServerProcess,
) -> None:
    ListHandler.body = hash_list(range(3))
    with _client(server) as admin:
        before = _binding(admin, "feed")
        assert (before.exchange, before.last_success, before.totals.added) == ("url", 0, 0)
        assert (before.sync_every_seconds, before.next_due_at) == (0, 0)  # not on a schedule
        assert not before.HasField("last_run")

        first = admin.sync_exchange("feed", wait_seconds=60)
        assert first.finished and (first.bank, first.exchange) == ("feed", "url")
        assert (first.run.outcome, first.run.trigger, first.run.caller) == (
            "ok", "manual", "admin")
        assert (first.run.counts.added, first.run.counts.deleted) == (3, 0)
        assert _external_ids(admin, "feed") == ["item-0", "item-1", "item-2"]

        ListHandler.body = hash_list([1, 2, 7, 8])  # item-0 gone upstream, two new
        second = admin.sync_exchange("feed", wait_seconds=60)
        assert (second.run.counts.added, second.run.counts.deleted,
                second.run.counts.unchanged) == (2, 1, 2)
        assert _external_ids(admin, "feed") == ["item-1", "item-2", "item-7", "item-8"]

        after = _binding(admin, "feed")
        assert (after.totals.added, after.totals.deleted, after.errors) == (5, 1, 0)
        assert after.last_success >= first.run.at and not after.failing
        assert (after.last_run.outcome, after.last_run.counts.added) == ("ok", 2)
        assert after.feedback.pending == 0 and after.credentials == ""
        assert str(after.config["source"]).endswith("/list.csv")

        scheduled = _binding(admin, "other")  # bound with every=3600, never synced: due now
        assert scheduled.sync_every_seconds == 3600
        assert scheduled.next_due_at == scheduled.bound_at
    syncs = [r for r in _audit(server) if r["event"] == "exchange_sync"]
    assert [(r["bank"], r["trigger"], r["caller"], r["outcome"], r["added"], r["deleted"])
            for r in syncs] == [("feed", "manual", "admin", "ok", 3, 0),
                                ("feed", "manual", "admin", "ok", 2, 1)]
    assert server.keys["admin"] not in (server.home / "audit.jsonl").read_text()


def test_the_http_routes_answer_as_grpc(server: ServerProcess) -> None:
    key = server.keys["admin"]
    synced = http(_base(server), "POST", "/v1/exchanges/feed/sync", key=key,
                  json_body={"waitSeconds": 60})
    assert synced.status == 200, synced.body
    assert synced.json()["finished"] is True and synced.json()["run"]["outcome"] == "ok"
    listed = http(_base(server), "GET", "/v1/exchanges?bank=feed", key=key)
    assert listed.status == 200, listed.body
    [binding] = listed.json()["bindings"]
    assert binding["bank"] == "feed" and binding["lastRun"]["trigger"] == "manual"
    unbound = http(_base(server), "POST", "/v1/exchanges/plain/sync", key=key, json_body={})
    assert unbound.status == 404 and unbound.json()["type"].endswith("/NOT_FOUND")
    assert "not bound to an exchange" in unbound.json()["detail"]
    wrong = http(_base(server), "POST", "/v1/exchanges/feed/sync", key=key,
                 json_body={"waitSeconds": 61})
    assert wrong.status == 422 and "wait_seconds must be between 0 and 60" in wrong.json()[
        "detail"]


def test_a_sync_still_running_answers_running_and_holds_the_turn(
    server: ServerProcess,
) -> None:
    ListHandler.body = hash_list([1, 2, 7, 8, 9])
    ListHandler.gate.clear()  # the stand-in holds its answer: the sync cannot end before
    try:
        with _client(server) as admin:
            started = admin.sync_exchange("feed", wait_seconds=0.2)
            assert not started.finished and started.run.outcome == "running"
            assert _binding(admin, "feed").last_run.outcome == "running"
            with pytest.raises(FailedPrecondition, match="another exchange sync is running"):
                admin.sync_exchange("other", wait_seconds=1)
            busy = http(_base(server), "POST", "/v1/exchanges/feed/sync",
                        key=server.keys["admin"], json_body={})
            assert busy.status == 409 and busy.json()["type"].endswith("/FAILED_PRECONDITION")
            ListHandler.gate.set()
            for _ in range(POLLS):
                if (last := _binding(admin, "feed").last_run).outcome != "running":
                    break
                time.sleep(0.1)
            assert (last.outcome, last.counts.added) == ("ok", 1)
            assert "item-9" in _external_ids(admin, "feed")
    finally:
        ListHandler.gate.set()


def test_bad_requests_get_a_precise_status_and_sync_nothing(server: ServerProcess) -> None:
    with _client(server) as admin:
        totals = _binding(admin, "feed").totals
        for wait in (-1.0, 60.5, float("nan")):
            with pytest.raises(InvalidArgument, match="wait_seconds must be between 0 and 60"):
                admin.sync_exchange("feed", wait_seconds=wait)
        with pytest.raises(InvalidArgument, match="name the exchange-bound bank"):
            admin.sync_exchange("")
        with pytest.raises(InvalidArgument, match="invalid bank name"):
            admin.sync_exchange("no such/bank")
        with pytest.raises(NotFound, match="'plain' is not bound to an exchange"):
            admin.sync_exchange("plain")
        with pytest.raises(NotFound, match="'plain' is not bound to an exchange"):
            admin.list_exchange_bindings("plain")
        assert _binding(admin, "feed").totals == totals
    with _client(server, "other-admin") as scoped:  # feed is not its bank: as if absent
        assert [b.bank for b in scoped.list_exchange_bindings()] == ["other"]
        with pytest.raises(NotFound, match="no bank named 'feed'"):
            scoped.sync_exchange("feed")
        with pytest.raises(NotFound, match="no bank named 'feed'"):
            scoped.list_exchange_bindings("feed")
    with _client(server, "scanner") as scanner, pytest.raises(PermissionDenied):
        scanner.sync_exchange("feed")


def test_on_sqlite_another_process_syncing_refuses_a_sync_now(server: ServerProcess) -> None:
    """SQLite's store lock is a no-op: the lock file beside the store is what makes another
    process (another worker of the server) wait its turn."""
    with open_store(server.home / "store.sqlite") as store, _client(server) as admin:
        # this test process is the other worker
        with sync_turn(store), pytest.raises(FailedPrecondition,
                                             match="another process is syncing"):
            admin.sync_exchange("feed", wait_seconds=5)
        assert admin.sync_exchange("feed", wait_seconds=60).run.outcome == "ok"


def test_another_process_holding_the_sync_lock_refuses_a_sync_now(
    postgres: PostgresServer, stand_in: str, tmp_path: Path,
) -> None:
    ListHandler.body = hash_list(range(2))
    url = postgres.new_database()
    with open_store(url) as store:
        store.create_bank("feed")
        store.bind_exchange("feed", "url", {"source": stand_in})
        with ServerProcess(tmp_path, "--role", "admin", "--store", url) as server, \
                _client(server) as admin:
            with store.writer_lock("sync"):  # as `indexer exchange sync` holds it
                with pytest.raises(FailedPrecondition, match="holds the sync lock"):
                    admin.sync_exchange("feed")
                assert _binding(admin, "feed").last_success == 0
            done = admin.sync_exchange("feed", wait_seconds=60)
            assert (done.finished, done.run.outcome, done.run.counts.added) == (True, "ok", 2)
            assert store.exchange_health("feed")[0].added == 2
