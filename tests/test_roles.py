"""Roles (`--role scan|admin|all`) and readiness (grpc.health.v1), on the real server.

A scan replica serves ScanService and no AdminService, writes nothing at start (no key, no
publish) and is not ready until a snapshot is there; the admin role serves AdminService and
publishing and no ScanService. Readiness with `--max-snapshot-age` is driven by a fake clock
over real watcher passes, so no test waits for time to pass.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hashsvc_client import Client, ServerError

from hashsvc import config
from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.server.readiness import LIVENESS, SERVICES_BY_ROLE, Readiness
from hashsvc.server.runtime import Runtime
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank
from tests.test_snapshot_reload import _copy, _point_current_at, _seed, _truncate_ids

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SCAN = "hashsvc.v1.ScanService"
ADMIN = "hashsvc.v1.AdminService"


def _health(target: str, service: str = "") -> int | grpc.StatusCode:
    """The status the server reports for `service`, or the call's error code (NOT_FOUND for a
    service this server does not have)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            status: int = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=10).status
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
        return status


def _wait_for_health(target: str, wanted: int, service: str = "") -> None:
    deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
    while _health(target, service) != wanted:
        assert time.monotonic() < deadline, f"health of {service!r} never became {wanted}"
        time.sleep(0.1)


def test_a_scan_replica_scans_has_no_admin_service_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--role", "scan") as server:
        for key in ("scanner", "admin"):  # an admin key may scan, as on any server
            with Client(server.target, api_key=server.keys[key]) as client:
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        with Client(server.target, api_key=server.keys["admin"]) as admin, \
                pytest.raises(ServerError) as refused:
            admin.list_banks()
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
        assert [_health(server.target, s) for s in ("", SCAN, LIVENESS)] == [SERVING] * 3
        assert _health(server.target, ADMIN) == grpc.StatusCode.NOT_FOUND
    assert not (home / "bootstrap-admin.key").exists()


def test_the_admin_role_administers_and_publishes_but_does_not_scan(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with ServerProcess(home, "--role", "admin") as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("bridge")
        assert admin.add_entries("bridge", [(("pdq", BRIDGE_PDQ), "bridge-orig", None)]).added == 1
        published = admin.publish()
        assert admin.index_status().version == published.version
        with pytest.raises(ServerError) as refused:
            admin.scan_hashes([("pdq", BRIDGE_PDQ)])
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED
        assert [_health(server.target, s) for s in ("", ADMIN)] == [SERVING] * 2
        assert _health(server.target, SCAN) == grpc.StatusCode.NOT_FOUND


def test_a_scan_replica_is_not_ready_until_a_snapshot_is_published(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    with SqliteStore(home.store_path) as store:
        store.create_bank("bridge")
        store.add_entries("bridge", [NewEntry("pdq", BRIDGE_PDQ, "bridge-orig")])
    with ServerProcess(home.root, "--role", "scan") as server:
        assert _health(server.target) == NOT_SERVING
        assert _health(server.target, LIVENESS) == SERVING  # alive: not to be restarted
        assert not (home.snapshots_dir / "current").exists()  # it published nothing itself
        with SqliteStore(home.store_path) as store:
            publish(store, home.snapshots_dir)
        _wait_for_health(server.target, SERVING)
        with Client(server.target, api_key=server.keys["scanner"]) as client:
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched


def test_a_scan_replica_without_a_keys_file_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    started = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--home", str(home), "--role", "scan",
         "--listen", "127.0.0.1:0", "--metrics-listen", "", "--workers", "1"],
        capture_output=True, text=True, timeout=120)
    assert started.returncode != 0
    assert "Traceback" not in started.stderr
    assert "a scan replica creates no keys" in started.stderr.strip().splitlines()[-1]
    assert not (home / "keys.toml").exists() and not (home / "bootstrap-admin.key").exists()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _status(servicer: health.HealthServicer, service: str = "") -> int:
    status: int = servicer.Check(health_pb2.HealthCheckRequest(service=service), None).status
    return status


def test_readiness_needs_a_snapshot_no_drain_and_not_too_far_behind() -> None:
    servicer, clock = health.HealthServicer(), Clock()
    readiness = Readiness(servicer, SERVICES_BY_ROLE["scan"], max_snapshot_age=5, clock=clock)
    assert (_status(servicer), _status(servicer, LIVENESS)) == (NOT_SERVING, SERVING)
    readiness.track(served=None, current="v1")  # the first snapshot still loading
    assert _status(servicer, SCAN) == NOT_SERVING
    readiness.track(served="v1", current="v1")
    assert _status(servicer) == _status(servicer, SCAN) == SERVING

    readiness.track(served="v1", current="v2")  # v2 published: behind from now on
    clock.now += 5
    readiness.track(served="v1", current="v2")
    assert _status(servicer) == SERVING  # 5 s behind is not more than 5 s
    clock.now += 0.5
    readiness.track(served="v1", current="v2")
    assert _status(servicer) == NOT_SERVING
    readiness.track(served="v2", current="v2")
    assert _status(servicer) == SERVING

    readiness.drain()
    readiness.track(served="v2", current="v2")
    assert (_status(servicer), _status(servicer, LIVENESS)) == (NOT_SERVING, SERVING)


def test_without_max_snapshot_age_a_replica_behind_stays_ready() -> None:
    servicer, clock = health.HealthServicer(), Clock()
    readiness = Readiness(servicer, SERVICES_BY_ROLE["all"], clock=clock)
    readiness.track(served="v1", current="v2")
    clock.now += 10**6
    readiness.track(served="v1", current="v2")
    assert _status(servicer) == _status(servicer, ADMIN) == SERVING


@pytest.fixture
def runtime(home: DataHome) -> Iterator[tuple[Runtime, Clock]]:
    _seed(home)
    served = Runtime(ServerConfig(home=home.root, role="scan", max_snapshot_age=30))
    clock = Clock()
    served.readiness = Readiness(served.health, SERVICES_BY_ROLE["scan"], 30, clock=clock)
    served.reload()
    yield served, clock
    served.stop()


def test_a_replica_refusing_the_current_snapshot_leaves_the_pool_after_max_age(
    runtime: tuple[Runtime, Clock], home: DataHome
) -> None:
    served, clock = runtime
    snapshot = served.scanner.snapshot
    assert snapshot is not None and _status(served.health) == SERVING
    _truncate_ids(_copy(home, snapshot.version, "short"))
    _point_current_at(home, "short")  # refused on every pass: this replica cannot follow
    served.tick()
    assert served.failed_loads == 1 and _status(served.health) == SERVING  # still serving v1
    clock.now += 31
    served.tick()
    assert _status(served.health) == NOT_SERVING
    assert served.scanner.snapshot is snapshot  # out of the pool, but still answering

    _point_current_at(home, snapshot.version)  # the repository points back: caught up
    served.tick()
    assert _status(served.health) == SERVING


def test_a_scan_replica_opens_the_sqlite_store_read_only_and_still_follows_it(
    home: DataHome,
) -> None:
    _seed(home)
    served = Runtime(ServerConfig(home=home.root, role="scan"))
    try:
        store = served.store
        assert isinstance(store, SqliteStore)
        with pytest.raises(HashsvcError, match="read-only"):
            store.create_bank("another")
        # Not only the store's own guard: the file itself is open mode=ro, so no statement
        # through the replica's connections can change it.
        for connection in (store._db, store._reader):
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                connection.execute("UPDATE meta SET value = '0' WHERE key = 'revision'")
        before = store.revision()
        with SqliteStore(home.store_path) as admin:  # the admin process writes meanwhile
            admin.add_entries("known", [NewEntry("pdq", bytes([5]) * 32, "k3")])
        changes = store.changes_since(before)
        assert changes.revision == before + 1
        assert [row[4] for row in changes.active] == ["k3"]
    finally:
        served.stop()


def test_a_scan_replica_creates_no_sqlite_store(tmp_path: Path) -> None:
    with pytest.raises(HashsvcError, match=r"no SQLite store at .*read-only and creates none"):
        Runtime(ServerConfig(home=tmp_path / "home", role="scan"))
    assert not (tmp_path / "home" / "store.sqlite").exists()


@pytest.mark.parametrize(("setting", "value", "error"), [
    ("ROLE", "scanner", "role must be one of scan, admin, all"),
    ("MAX_SNAPSHOT_AGE", "-1", "max_snapshot_age must be 0 (off) or more"),
    ("MAX_CONNECTION_AGE", "-5", "max_connection_age must be 0 (off) or more"),
])
def test_role_and_ages_are_checked(tmp_path: Path, setting: str, value: str, error: str) -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    environ = {"HASHSVC_HOME": str(tmp_path), f"HASHSVC_{setting}": value}
    with pytest.raises(HashsvcError, match=re.escape(error)):
        config.load(parser.parse_args([]), environ)
