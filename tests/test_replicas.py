"""Replica status on real servers: ReplicaService.GetServingStatus (public, every role) and
AdminService.ListReplicas over an admin and a scan replica sharing one store and snapshot
repository, plus an address where nothing listens."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hashsvc_client import Client, PermissionDenied, Tls
from hashsvc_client.v1 import admin_pb2, replica_pb2

from hashsvc.server.replicas import replica_addresses
from tests.http_client import http
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank
from tests.tls_certs import make_pki

HANG_GUARD = 60.0  # seconds; a guard against a hang, never a timing assertion


def _dead_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class Fleet:
    admin: ServerProcess
    replica: ServerProcess
    dead: str

    def list(self) -> admin_pb2.ListReplicasResponse:
        with Client(self.admin.target, api_key=self.admin.keys["admin"]) as client:
            return client.list_replicas()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("replicas-home")
    _seed_bridge_bank(home)
    with ServerProcess(home, "--role", "scan") as replica:
        dead = _dead_address()
        with ServerProcess(home, "--role", "admin", "--replicas", f"{replica.target},{dead}",
                           "--replica-timeout", "10", keys={}) as admin:
            admin.keys = replica.keys  # one keys file: the replica's start made the keys
            yield Fleet(admin, replica, dead)


def test_list_replicas_shows_each_version_and_marks_a_dead_one_unreachable(fleet: Fleet) -> None:
    listed = fleet.list()
    this, replica, dead = listed.replicas
    assert this.this_server and this.reachable and this.status.role == "admin"
    assert replica.address == fleet.replica.target and replica.reachable
    assert replica.status.role == "scan" and replica.status.workers == 1
    assert replica.status.version == this.status.version == listed.current_version != ""
    assert replica.current and this.current
    assert replica.status.loaded_at >= replica.status.created_at > 0
    assert dead.address == fleet.dead and not dead.reachable
    assert "UNAVAILABLE" in dead.error and not dead.HasField("status")


def test_a_change_is_pending_until_published_then_every_replica_serves_the_new_version(
        fleet: Fleet) -> None:
    with Client(fleet.admin.target, api_key=fleet.admin.keys["admin"]) as admin:
        before = fleet.list()
        admin.add_entries("bridge", [(("pdq", bytes(32)), "zeros", None)])
        pending = fleet.list()
        assert pending.store_revision == before.store_revision + 1
        assert [r.pending_changes for r in pending.replicas[:2]] == [
            r.pending_changes + 1 for r in before.replicas[:2]]
        published = admin.publish()
    assert published.published
    deadline = time.monotonic() + HANG_GUARD
    while (after := fleet.list()).replicas[1].status.version != published.version:
        assert time.monotonic() < deadline, "the replica never loaded the published snapshot"
        time.sleep(0.1)
    assert after.current_version == published.version
    assert [(r.pending_changes, r.current) for r in after.replicas[:2]] == [(0, True)] * 2


def test_serving_status_is_public_and_tells_no_bank(fleet: Fleet) -> None:
    with Client(fleet.replica.target, api_key=None) as anonymous:
        status = anonymous.serving_status()
    assert status.version and status.role == "scan"
    assert set(replica_pb2.ServingStatus.DESCRIPTOR.fields_by_name) == {
        "version", "created_at", "loaded_at", "age_seconds", "store_revision", "live_revision",
        "role", "workers", "server_version"}
    assert "bridge" not in str(status)
    with Client(fleet.replica.target, api_key=fleet.replica.keys["scanner"]) as scanner:
        assert scanner.scan_hashes([("pdq", BRIDGE_PDQ)]).matched  # the replica serves scans


def test_list_replicas_needs_the_admin_role(fleet: Fleet) -> None:
    with Client(fleet.admin.target, api_key=fleet.admin.keys["scanner"]) as scanner, \
            pytest.raises(PermissionDenied):
        scanner.list_replicas()


def test_replicas_and_serving_status_over_http(fleet: Fleet) -> None:
    base = f"http://127.0.0.1:{fleet.admin.http_port}"
    listed = http(base, "GET", "/v1/replicas", key=fleet.admin.keys["admin"])
    assert listed.status == 200, listed.body
    replicas = listed.json()["replicas"]
    assert [r.get("reachable", False) for r in replicas] == [True, True, False]
    assert http(base, "GET", "/v1/replicas").status == 401
    public = http(base, "GET", "/v1/serving-status")  # no key
    assert public.status == 200 and public.json()["role"] == "admin"


def test_a_dns_name_is_asked_at_each_of_its_addresses() -> None:
    assert replica_addresses(" a:1, dns:///localhost:50051 ,") [0] == "a:1"
    expanded = replica_addresses("dns:///localhost:50051")
    assert "127.0.0.1:50051" in expanded and len(expanded) == len(set(expanded))
    assert replica_addresses("dns:///no-such-host.invalid:1") == ["no-such-host.invalid:1"]


def test_replicas_serving_tls_are_asked_over_tls_verified_by_the_given_ca(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    ca, server_pem, _ = make_pki(tmp_path)
    tls = ("--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key))
    with ServerProcess(home, "--role", "scan", *tls) as replica, \
            ServerProcess(home, "--role", "admin", *tls, "--http-listen", "off",
                          "--replicas", replica.target, "--replica-tls-ca", str(ca.cert),
                          keys={}) as admin, \
            Client(admin.target, api_key=replica.keys["admin"],
                   tls=Tls(ca_cert=ca.cert)) as client:
        this, asked = client.list_replicas().replicas
    assert asked.reachable, asked.error
    assert asked.status.role == "scan" and asked.status.version == this.status.version
