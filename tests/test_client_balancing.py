"""The client over several servers: one target naming them all, balanced per call (round_robin).

Three real scan replicas on loopback share one data home, as replicas share a repository. Each
server's own /metrics says how many calls it served, so the spread is measured where it
happened. Counts of calls are bounded; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import AsyncClient, Client
from hashsvc_client._channel import channel_target

from tests.conftest import BRIDGE_ORIGINAL
from tests.server_process import ServerProcess
from tests.test_observability import _samples, _value
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank

MAX_CALLS = 600  # a hang guard for "until every replica has answered"


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    started: list[ServerProcess] = []
    try:
        started.append(ServerProcess(home, "--role", "scan"))
        for _ in range(2):  # the same keys file: the first made the keys
            started.append(ServerProcess(home, "--role", "scan", keys={}))
        yield started
    finally:
        for server in started:
            server.stop()


def _served(server: ServerProcess) -> float:
    return _value(_samples(server.scrape()), "hashsvc_requests_total", method="ScanHashes",
                  code="OK")


def _scan_until_all_answered(client: Client, servers: list[ServerProcess]) -> int:
    """Calls, ten at a time, until each server has served one; how many were made."""
    calls = 0
    while not all(_served(server) for server in servers):
        assert calls < MAX_CALLS, f"a replica got no call in {calls} calls"
        for _ in range(10):
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        calls += 10
    return calls


def test_one_client_balances_calls_over_every_replica_and_survives_losing_one(
    replicas: list[ServerProcess],
) -> None:
    key = replicas[0].keys["scanner"]
    target = ",".join(server.target for server in replicas)  # 127.0.0.1:P1,127.0.0.1:P2,...
    with Client(target, api_key=key) as client:
        assert client.target == f"ipv4:{target}"
        warm_up = _scan_until_all_answered(client, replicas)

        # Every connection is up: round_robin takes each ready replica in turn, call by call.
        before = [_served(server) for server in replicas]
        for _ in range(30):
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert [_served(s) - b for s, b in zip(replicas, before, strict=True)] == [10, 10, 10]
        assert sum(before) == warm_up

        # A replica dies without a word (SIGKILL): no call fails; the others take them all.
        lost, *survivors = replicas
        os.kill(lost.pid, signal.SIGKILL)
        lost.stop()
        before = [_served(server) for server in survivors]
        for _ in range(40):
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert sum(_served(s) - b for s, b in zip(survivors, before, strict=True)) == 40


def test_the_async_client_and_hashscan_take_several_servers(
    replicas: list[ServerProcess],
) -> None:
    key = replicas[0].keys["scanner"]
    addresses = [server.target for server in replicas[:2]]

    async def scan(count: int) -> list[bool]:
        async with AsyncClient(addresses, api_key=key) as client:  # a list works too
            return [(await client.scan_hashes([("pdq", BRIDGE_PDQ)])).matched
                    for _ in range(count)]

    calls = 0
    while not all(_served(server) for server in replicas[:2]):
        assert calls < MAX_CALLS
        assert all(asyncio.run(scan(10)))
        calls += 10
    assert _served(replicas[2]) == 0  # not in the list, not called

    scanned = subprocess.run(
        [sys.executable, "-m", "hashsvc_client.cli", "--server", ",".join(addresses),
         "--api-key", key, str(BRIDGE_ORIGINAL)], capture_output=True, text=True, timeout=300)
    assert scanned.returncode == 1, scanned.stderr  # 1: matched


def test_a_server_with_a_connection_age_recycles_connections_without_failing_calls(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--max-connection-age", "0.2") as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        for _ in range(50):
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched


@pytest.mark.parametrize(("given", "target"), [
    ("10.0.0.1:50051", "10.0.0.1:50051"),
    ("dns:///hashsvc-scan.hashsvc.svc.cluster.local:50051",
     "dns:///hashsvc-scan.hashsvc.svc.cluster.local:50051"),
    ("10.0.0.1:50051, 10.0.0.2:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
    (["10.0.0.1:50051", "10.0.0.2:50051"], "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
    ("[::1]:50051,[::1]:50052", "ipv6:[::1]:50051,[::1]:50052"),
    ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
])
def test_targets(given: str | list[str], target: str) -> None:
    assert channel_target(given) == target


@pytest.mark.parametrize(("given", "error"), [
    ("scan-a:50051,scan-b:50051", "must be an IP address"),
    ("10.0.0.1:50051,[::1]:50051", "IPv4 addresses, or IPv6 ones, not both"),
    ("10.0.0.1,10.0.0.2:50051", "needs a port"),
    ("::1:50051,::1:50052", "needs brackets"),
    ([], "no server address given"),
])
def test_bad_targets_are_refused_with_the_reason(given: str | list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        channel_target(given)


def test_hashscan_names_a_bad_server_list(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hashsvc_client.cli", "--server", "scan-a:1,scan-b:1",
         str(BRIDGE_ORIGINAL)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("hashscan: error: --server: server address 'scan-a:1'")
