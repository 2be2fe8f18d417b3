"""A PostgreSQL restart under load costs retries, not lost or doubled writes (postgres_retry.py).

Faults are made real and deterministic, never timed: a write is held on the revision row lock
(which every write takes first) by a transaction of the test's own, so it is provably mid-
transaction when its backend is terminated or the server restarted; waits poll the server's
own view (pg_stat_activity) under a hang guard.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import pytest
from hashsvc_client import Client
from hashsvc_client.errors import HashsvcClientError
from prometheus_client import REGISTRY

from hashsvc.errors import HashsvcError, StoreUnavailableError
from hashsvc.store import AddResult, EntrySelector, NewEntry
from hashsvc.store.postgres import PostgresStore
from hashsvc.store.postgres_retry import (
    REPLAY_ROWS,
    AlreadyApplied,
    is_retryable,
    record_result,
)
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess

HANG_GUARD = 600  # seconds: only ever reached if something hangs


def _code(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _retries(kind: str) -> float:
    return REGISTRY.get_sample_value("hashsvc_store_retries_total", {"kind": kind}) or 0.0


@contextmanager
def _revision_held(url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Hold the revision row lock: every write of every store blocks on it, mid-transaction."""
    blocker = psycopg.connect(url, application_name="test blocker")
    try:
        blocker.execute("SELECT value FROM meta WHERE key = 'revision' FOR UPDATE")
        yield blocker
    finally:
        blocker.close()  # rolls back, if the server is still there to be told


def _wait_for_blocked_writers(url: str, at_least: int = 1) -> list[int]:
    """The pids of hashsvc backends waiting on the revision lock, once there are `at_least`."""
    deadline = time.monotonic() + HANG_GUARD
    with psycopg.connect(url, autocommit=True) as watcher:
        while True:
            pids = [int(str(r[0])) for r in watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND application_name LIKE 'hashsvc%'")]
            if len(pids) >= at_least:
                return pids
            assert time.monotonic() < deadline, "no write ever blocked on the revision lock"
            time.sleep(0.05)


def test_connection_failures_are_retried_and_nothing_else_is() -> None:
    assert is_retryable(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert is_retryable(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_retryable(psycopg.errors.CannotConnectNow("the database system is starting up"))
    assert not is_retryable(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_retryable(psycopg.errors.QueryCanceled("statement timeout"))
    assert not is_retryable(psycopg.errors.InvalidTextRepresentation("bad input"))
    assert not is_retryable(ValueError("not a database error"))


@pytest.mark.parametrize("write", ["create_bank", "add_entries", "set_disabled"])
def test_a_write_whose_connection_dies_mid_transaction_is_re_run_and_applied_once(
    postgres: PostgresServer, write: str,
) -> None:
    url = postgres.new_database()
    with PostgresStore(url) as store:
        store.create_bank("a")
        store.add_entries("a", [NewEntry("pdq", _code(1), "e1")])
        revision = store.revision()
        calls: dict[str, Callable[[], object]] = {
            "create_bank": lambda: store.create_bank("b").name,
            "add_entries": lambda: store.add_entries("a", [NewEntry("pdq", _code(2), "e2")]),
            "set_disabled": lambda: store.set_disabled(
                "a", EntrySelector(external_ids=("e1",)), True),
        }
        outcome: list[object] = []
        retried = _retries("write")
        with _revision_held(url):
            writer = threading.Thread(target=lambda: outcome.append(calls[write]()))
            writer.start()
            with psycopg.connect(url, autocommit=True) as killer:
                for pid in _wait_for_blocked_writers(url):
                    killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        writer.join(HANG_GUARD)
        assert not writer.is_alive()
        assert _retries("write") >= retried + 1
        assert outcome == [{"create_bank": "b", "add_entries": AddResult(added=1),
                            "set_disabled": 1}[write]]
        assert store.revision() == revision + 1  # applied once
        entries = store.stats().entries
        assert entries == (2 if write == "add_entries" else 1)


def _kill_backend_of(url: str, conn: psycopg.Connection[object]) -> None:
    with psycopg.connect(url, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def test_an_import_that_loses_its_connection_is_replayed_whole_and_committed_once(
    postgres: PostgresServer,
) -> None:
    """The connection dies after a first batch, and again just before the COMMIT: each time
    the rows received so far are re-added in a new transaction, and the import lands once."""
    url = postgres.new_database()
    with PostgresStore(url) as store:
        store.create_bank("a")
        revision, retried = store.revision(), _retries("write")
        with store.bulk_add("a") as adder:
            adder.add([NewEntry("pdq", _code(n), f"e{n}") for n in range(10)])
            _kill_backend_of(url, adder._conn)  # type: ignore[arg-type]
            adder.add([NewEntry("pdq", _code(n), f"e{n}") for n in range(10, 15)])
            _kill_backend_of(url, adder._conn)  # type: ignore[arg-type]
        assert adder.result == AddResult(added=15)
        assert _retries("write") >= retried + 2
        assert store.revision() == revision + 1
        assert len(store.find_entries("a", EntrySelector(
            external_ids=tuple(f"e{n}" for n in range(15))))) == 15


def test_an_import_too_large_to_replay_fails_in_one_line_and_stores_nothing(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    with PostgresStore(url) as store:
        store.create_bank("a")
        with pytest.raises(StoreUnavailableError, match="not re-run: nothing of it was stored"), \
                store.bulk_add("a", expected=REPLAY_ROWS) as adder:
            adder.add([NewEntry("pdq", _code(n)) for n in range(10)])
            _kill_backend_of(url, adder._conn)  # type: ignore[arg-type]
            adder.add([NewEntry("pdq", _code(n)) for n in range(10, 20)])
        assert store.stats().entries == 0


def test_a_re_run_of_a_write_that_committed_answers_from_the_record(
    postgres: PostgresServer,
) -> None:
    """The lost acknowledgement: a write committed, its connection died before the client
    heard. The re-run carries the same operation key, finds it, rolls back and answers with
    the recorded result, so nothing is applied twice (and a created bank is not reported as
    'already exists')."""
    with PostgresStore(postgres.new_database()) as store:
        store.create_bank("a")
        with store._write("key-1") as (conn, _):
            conn.execute("UPDATE banks SET description = 'x' WHERE name = 'a'")
            record_result(conn, "key-1", 7)
        revision = store.revision()
        with pytest.raises(AlreadyApplied) as applied, store._write("key-1"):
            raise AssertionError("the body of an applied write must not run again")
        assert applied.value.result == 7
        assert store.revision() == revision  # the re-run bumped nothing


def test_a_constraint_violation_is_not_retried(postgres: PostgresServer) -> None:
    with PostgresStore(postgres.new_database()) as store:
        store.create_bank("a")
        retried = _retries("write")
        with pytest.raises(HashsvcError, match="already exists"):
            store.create_bank("a")
        assert _retries("write") == retried


def test_a_server_that_stays_down_fails_the_write_with_unavailable_naming_the_store(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database().replace(f"://{postgres.user}@",
                                          f"://{postgres.user}:hunter2@")
    with PostgresStore(url, pool_wait=1.0) as store:
        store.create_bank("a")
        with _revision_held(url):
            failed: list[BaseException] = []

            def write() -> None:
                try:
                    store.add_entries("a", [NewEntry("pdq", _code(5))])
                except BaseException as err:  # inspected below
                    failed.append(err)

            writer = threading.Thread(target=write)
            writer.start()
            _wait_for_blocked_writers(url)
            postgres.stop()  # and it stays down for every retry
        try:
            writer.join(HANG_GUARD)
        finally:
            postgres.start()
        assert len(failed) == 1 and isinstance(failed[0], StoreUnavailableError), failed
        message = failed[0].message
        assert f"{postgres.user}:***@" in message and "hunter2" not in message, message
    with PostgresStore(url) as reopened:
        assert reopened.stats().entries == 0  # nothing half-written


def test_postgres_restarting_under_grpc_writes_costs_retries_not_writes(
    postgres: PostgresServer, tmp_path: Path,
) -> None:
    """Three clients keep adding entries through the real AdminService while PostgreSQL
    restarts with writes provably in flight. Every call succeeds or fails UNAVAILABLE; every
    acknowledged entry is stored, once (a doubled write would answer 'duplicate')."""
    url = postgres.new_database()
    home = tmp_path / "home"
    home.mkdir()
    threads, calls = 3, 15
    outcomes: Counter[str] = Counter()
    acknowledged: list[bytes] = []
    answers: list[tuple[int, int]] = []
    lock = threading.Lock()
    with ServerProcess(home, "--role", "admin", "--store", url) as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("known")

        def writer(number: int) -> None:
            for call in range(calls):
                value = _code(number * 1000 + call)
                try:
                    added = admin.add_entries("known", [(("pdq", value), None, None)])
                except HashsvcClientError as err:
                    with lock:
                        outcomes[err.code.name] += 1
                    continue
                with lock:
                    outcomes["OK"] += 1
                    acknowledged.append(value)
                    answers.append((added.added, added.duplicates))

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        with _revision_held(url):
            for worker in workers:
                worker.start()
            _wait_for_blocked_writers(url, at_least=1)
            postgres.restart()  # the held lock and the blocked writes die with the server
        for worker in workers:
            worker.join(HANG_GUARD)
        assert not any(worker.is_alive() for worker in workers)
        metrics = server.scrape()

    assert sum(outcomes.values()) == threads * calls
    assert set(outcomes) <= {"OK", grpc.StatusCode.UNAVAILABLE.name}, outcomes
    assert outcomes["OK"] >= 1, outcomes
    assert all(answer == (1, 0) for answer in answers), answers  # none applied twice
    retries = sum(float(v) for v in re.findall(
        r'^hashsvc_store_retries_total\{kind="write"\} (\S+)$', metrics, re.MULTILINE))
    assert retries >= 1, (outcomes, metrics)
    with PostgresStore(url) as store:
        found = {e.hash for e in store.find_entries(
            "known", EntrySelector(hashes=tuple(("pdq", v) for v in acknowledged)))}
        assert found == set(acknowledged)
        assert len(acknowledged) <= store.stats().entries <= threads * calls
