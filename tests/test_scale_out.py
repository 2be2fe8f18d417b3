"""Scale-out, end to end on loopback: a real PostgreSQL store, an S3-compatible bucket (moto's
server, the local stand-in for S3), ONE admin process and THREE scan replicas, each its own
process with its own home and snapshot cache, sharing only the store URL, the bucket and the
keys file, as they would on separate nodes.

The tests run in file order on one cluster (module fixture), each leaving it serving. Every
wait is bounded polling with a generous hang guard; nothing asserts how fast anything is. The
time a live change took to reach the replicas is printed (`pytest -s`), never asserted: the
README's figures come from loadtests/bench_freshness.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hashsvc_client import Client, FailedPrecondition, HashsvcClientError

from hashsvc.home import DataHome
from hashsvc.store import open_store
from loadtests.bench_freshness import measure
from loadtests.processes import descendants
from tests.conftest import run_indexer
from tests.postgres_server import PostgresServer
from tests.scale_out import Cluster, running_cluster
from tests.server_process import ServerProcess

HANG_GUARD = 120.0  # seconds: a hang guard for every wait, never a timing assertion
SCANS_UNDER_LOAD = 300  # calls the balancing client makes while a replica is killed
LOADERS = 4  # threads making them


def _pdq(number: int) -> str:
    """A PDQ hash far (about 128 bits) from every other one here: one match per scan."""
    return hashlib.sha256(str(number).encode()).hexdigest()


@pytest.fixture(scope="module")
def cluster(postgres: PostgresServer, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    with running_cluster(postgres.new_database(), s3_endpoint,
                         tmp_path_factory.mktemp("scale-out"), replicas=3) as running:
        yield running


def _wait_until(condition: Callable[[], bool], what: str, since: float | None = None) -> float:
    """Poll `condition` until it holds; the seconds since `since` (default: now), for printing
    only."""
    started = time.monotonic() if since is None else since
    while not condition():
        assert time.monotonic() - started < HANG_GUARD, f"never happened: {what}"
        time.sleep(0.02)
    return round(time.monotonic() - started, 3)


def _served_version(replica: ServerProcess) -> str | None:
    """The version this replica last said it serves (its "serving snapshot" log line)."""
    served = [r["version"] for r in replica.records() if r.get("message") == "serving snapshot"]
    return served[-1] if served else None


def _refused(replica: ServerProcess, version: str) -> list[dict[str, Any]]:
    return [r for r in replica.records()
            if r.get("message", "").startswith("refused snapshot") and r["version"] == version]


def _matches(replica: ServerProcess, key: str, pdq: str) -> list[str]:
    with Client(replica.target, api_key=key) as client:
        return [m.external_id for m in client.scan_hashes([("pdq", pdq)], dihedral=False).matches]


def _all_serve(cluster: Cluster, version: str) -> None:
    for replica in cluster.live:
        _wait_until(lambda r=replica: _served_version(r) == version,  # type: ignore[misc]
                    f"{replica.target} serves {version}")


def _publish(cluster: Cluster) -> str:
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
        version: str = admin.publish().version
    return version


def test_import_then_publish_reaches_every_replica(cluster: Cluster, tmp_path: Path) -> None:
    hashes = tmp_path / "known.csv"
    hashes.write_text("hash,external_id\n" + "".join(f"{_pdq(n)},known-{n}\n"
                                                     for n in range(1, 201)))
    home = DataHome(tmp_path / "indexer-home")
    run_indexer(home, "--store", cluster.store, "bank", "create", "known", check=True)
    run_indexer(home, "--store", cluster.store, "import", "known", str(hashes),
                "--algorithm", "pdq", check=True)
    published = run_indexer(home, "--store", cluster.store, "publish", "--snapshots",
                            cluster.snapshots, "--s3-endpoint-url", cluster.endpoint, check=True)
    version = json.loads(published.stdout)["version"]
    _all_serve(cluster, version)
    for replica in cluster.replicas:
        assert _matches(replica, cluster.scan_key, _pdq(7)) == ["known-7"]
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:  # polls it too
        _wait_until(lambda: admin.index_status().version == version, "the admin sees it")


def test_an_add_and_a_disable_reach_every_replica_without_a_publish(cluster: Cluster) -> None:
    code = _pdq(10**6)
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
        admin.add_entries("known", [(("pdq", code), "added-live", None)])
        returned = time.monotonic()  # each replica's time counts from the call's return
        added = [_wait_until(
            lambda r=r: _matches(r, cluster.scan_key, code) == ["added-live"],  # type: ignore[misc]
            f"the add on {r.target}", since=returned) for r in cluster.replicas]
        admin.set_entries_disabled("known", hashes=[("pdq", code)], reason="test")
        returned = time.monotonic()
        disabled = [_wait_until(
            lambda r=r: _matches(r, cluster.scan_key, code) == [],  # type: ignore[misc]
            f"the disable on {r.target}", since=returned) for r in cluster.replicas]
    print(f"\nseconds until visible on replicas 1, 2, 3: add {added}, disable {disabled}")


def test_a_corrupt_object_is_refused_while_the_old_version_keeps_serving(
    cluster: Cluster,
) -> None:
    before = _publish_and_wait(cluster, _pdq(2 * 10**6))
    s3 = boto3.client("s3", endpoint_url=cluster.endpoint)
    # The replicas stand still (SIGSTOP) while the next version is published and one of its new
    # objects is damaged, so that none of them can fetch it before the damage.
    paused = [pid for r in cluster.replicas for pid in (r.pid, *descendants(r.pid))]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
            admin.add_entries("known", [(("pdq", _pdq(3 * 10**6)), "in-the-bad-one", None)])
        bad = _publish(cluster)
        digest = _new_digests(s3, cluster.bucket, before, bad)[0]
        key = f"hashsvc/objects/{digest}"
        body: bytes = s3.get_object(Bucket=cluster.bucket, Key=key)["Body"].read()
        s3.put_object(Bucket=cluster.bucket, Key=key, Body=bytes([body[0] ^ 0xFF]) + body[1:])
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    for replica in cluster.replicas:
        _wait_until(lambda r=replica: bool(_refused(r, bad)),  # type: ignore[misc]
                    f"{replica.target} refuses {bad}")
        assert digest[:12] in _refused(replica, bad)[0]["error"]
        assert _served_version(replica) == before  # the old one keeps serving
        assert _matches(replica, cluster.scan_key, _pdq(7)) == ["known-7"]
        assert 'hashsvc_snapshot_fetch_failures_total{reason="corrupt"} 1.0' in replica.scrape()
    # Mended and published again: every replica moves on.
    s3.put_object(Bucket=cluster.bucket, Key=key, Body=body)
    _publish_and_wait(cluster, _pdq(4 * 10**6))


def _publish_and_wait(cluster: Cluster, pdq: str) -> str:
    """Add one entry, publish, and wait until every live replica serves the new version."""
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
        admin.add_entries("known", [(("pdq", pdq), None, None)])
    version = _publish(cluster)
    _all_serve(cluster, version)
    return version


def _new_digests(s3: Any, bucket: str, old: str, new: str) -> list[str]:
    def digests(version: str) -> set[str]:
        body = s3.get_object(Bucket=bucket, Key=f"hashsvc/manifests/{version}.json")["Body"]
        return {entry["sha256"] for entry in json.loads(body.read())["files"].values()}

    return sorted(digests(new) - digests(old))


def test_two_concurrent_publishes_never_interleave(cluster: Cluster, tmp_path: Path) -> None:
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
        admin.add_entries("known", [(("pdq", _pdq(5 * 10**6)), None, None)])
    home = DataHome(tmp_path / "publisher")
    command = [sys.executable, "-m", "indexer", "--home", str(home.root), "--store",
               cluster.store, "publish", "--force", "--snapshots", cluster.snapshots,
               "--s3-endpoint-url", cluster.endpoint]
    s3 = boto3.client("s3", endpoint_url=cluster.endpoint)

    def pointer() -> str:
        return str(s3.get_object(Bucket=cluster.bucket, Key="hashsvc/current")["Body"]
                   .read().decode().strip())

    # While another process publishes (here: this one, holding the lock), neither the admin's
    # PublishSnapshot nor `indexer publish` starts one: both say who holds it; nothing moves.
    before = pointer()
    holder = f"pid {os.getpid()}"
    with open_store(cluster.store) as store, store.writer_lock("publish"):
        with Client(cluster.admin.target, api_key=cluster.admin_key) as admin, \
                pytest.raises(FailedPrecondition) as busy:
            admin.publish(force=True)
        assert "holds the publish lock" in str(busy.value) and holder in str(busy.value)
        refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "holds the publish lock" in refused.stderr and holder in refused.stderr
        assert pointer() == before

    # Two at once: each either publishes a whole version of its own or is refused the same way.
    results: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        results.append(subprocess.run(command, capture_output=True, text=True, timeout=300))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = [json.loads(r.stdout)["version"] for r in results if r.returncode == 0]
    for result in results:
        if result.returncode != 0:
            assert "holds the publish lock" in result.stderr, result.stderr
    assert published and len(set(published)) == len(published)
    assert pointer() in published  # the pointer names a complete version, which all load
    _all_serve(cluster, pointer())


def test_a_replica_started_later_catches_up(cluster: Cluster) -> None:
    current = _publish_and_wait(cluster, _pdq(6 * 10**6))
    with Client(cluster.admin.target, api_key=cluster.admin_key) as admin:
        admin.add_entries("known", [(("pdq", _pdq(7 * 10**6)), "after-publish", None)])
    late = cluster.start_replica()
    _wait_until(lambda: _served_version(late) == current, "the late replica serves the current")
    assert _matches(late, cluster.scan_key, _pdq(7)) == ["known-7"]
    _wait_until(lambda: _matches(late, cluster.scan_key, _pdq(7 * 10**6)) == ["after-publish"],
                "the late replica applies the change made since the publish")


def test_the_freshness_benchmark_watches_every_replica(cluster: Cluster) -> None:
    """loadtests/bench_freshness.py's measurement, on this cluster (its --replicas mode starts
    the same topology, tests/scale_out.py)."""
    targets = [replica.target for replica in cluster.live]
    result = measure(cluster.admin.target, cluster.admin_key, rounds=1, channels=1,
                     scan_targets=targets)
    assert result["replicas"] == len(targets)
    assert result["add_visible"]["max_ms"] >= 0 and result["disable_visible"]["max_ms"] >= 0


def test_a_replica_killed_under_load_costs_no_failed_call(cluster: Cluster) -> None:
    replicas = cluster.live[:3]
    target = ",".join(replica.target for replica in replicas)
    failures: list[HashsvcClientError] = []
    done = 0
    counted = threading.Condition()

    def scan(client: Client, calls: int) -> None:
        nonlocal done
        for _ in range(calls):
            try:
                assert client.scan_hashes([("pdq", _pdq(7))]).matched
            except HashsvcClientError as error:
                failures.append(error)
            with counted:
                done += 1
                counted.notify_all()

    with Client(target, api_key=cluster.scan_key) as client:
        threads = [threading.Thread(target=scan, args=(client, SCANS_UNDER_LOAD // LOADERS))
                   for _ in range(LOADERS)]  # several calls in flight when the replica dies
        for thread in threads:
            thread.start()
        with counted:
            assert counted.wait_for(lambda: done >= SCANS_UNDER_LOAD // 3, timeout=HANG_GUARD)
        victim = replicas[0]  # the whole replica dies without a word
        for pid in (victim.pid, *descendants(victim.pid)):
            os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=HANG_GUARD)
    victim.stop()
    assert done == SCANS_UNDER_LOAD and failures == []
