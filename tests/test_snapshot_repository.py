"""Snapshots through an S3-compatible bucket: publish, fetch, verify, cache, swap, and faults.

The bucket is real S3 protocol over loopback: moto's server mode (the local stand-in for S3),
started on a free port on 127.0.0.1. Replicas are `Runtime`s driven pass by pass (`reload`,
`tick`) so that every assertion is a count, never a rate; one test runs the real server process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hashsvc_client import Client
from prometheus_client import REGISTRY

from hashsvc.config import ServerConfig
from hashsvc.hashing.algorithms import HashValue
from hashsvc.home import DataHome
from hashsvc.matching.matcher import Query
from hashsvc.server.runtime import Runtime
from hashsvc.snapshot import load, publish
from hashsvc.snapshot.s3 import S3Repository
from hashsvc.store import NewEntry, SqliteStore
from tests.s3_server import SECRET, new_bucket, start_moto
from tests.server_process import ServerProcess

PASSES = 10  # watcher passes per step: a retry loop would fetch (or fail) on every one

pytestmark = pytest.mark.usefixtures("aws_environment")


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return new_bucket(s3_endpoint)


def _repository(endpoint: str, bucket: str, cache: Path) -> S3Repository:
    return S3Repository(f"s3://{bucket}/hashsvc", cache_dir=cache, endpoint_url=endpoint)


def _seed(home: DataHome, entries: int = 50) -> None:
    with SqliteStore(home.create().store_path) as store:
        store.create_bank("known")
        store.add_entries("known", [NewEntry("pdq", i.to_bytes(32, "big"), f"k{i}")
                                    for i in range(1, entries + 1)])


def _publish(home: DataHome, repository: S3Repository, **options: Any) -> Any:
    with SqliteStore(home.store_path) as store:
        return publish(store, repository, **options)


def _replica(home: DataHome, endpoint: str, bucket: str, cache: Path) -> Runtime:
    """A replica: the shared store (for its delta), snapshots from the bucket, its own cache."""
    return Runtime(ServerConfig(home=home.root, snapshots=f"s3://{bucket}/hashsvc",
                                snapshot_cache=cache, s3_endpoint_url=endpoint,
                                snapshot_poll_interval=0.01))


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _failures(reason: str) -> float:
    return _sample("hashsvc_snapshot_fetch_failures_total", reason=reason)


def _keys(endpoint: str, bucket: str, under: str) -> dict[str, int]:
    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                            Prefix=f"hashsvc/{under}")
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def _digests(manifest: dict[str, Any]) -> set[str]:
    return {entry["sha256"] for entry in manifest["files"].values()}


@pytest.fixture
def served(home: DataHome, s3_endpoint: str, bucket: str, tmp_path: Path
           ) -> Iterator[tuple[Runtime, S3Repository, Any]]:
    """A bucket holding one published version and a replica serving it."""
    _seed(home)
    repository = _repository(s3_endpoint, bucket, tmp_path / "publisher-cache")
    first = _publish(home, repository)
    replica = _replica(home, s3_endpoint, bucket, tmp_path / "replica-cache")
    assert replica.reload()
    yield replica, repository, first
    replica.stop()


def _add_md5(home: DataHome, count: int) -> None:
    with SqliteStore(home.store_path) as store:
        store.add_entries("known", [NewEntry("md5", bytes([i]) * 16, f"m{i}")
                                    for i in range(count)])


def _ticks(runtime: Runtime, passes: int = PASSES) -> None:
    for _ in range(passes):
        runtime.reload()


def test_publish_to_the_bucket_then_a_replica_serves_it(
    served: tuple[Runtime, S3Repository, Any], s3_endpoint: str, bucket: str
) -> None:
    replica, _, first = served
    snapshot = replica.scanner.snapshot
    assert snapshot is not None and snapshot.version == first.version
    assert snapshot.entry_count == 50
    # Content-addressed: one object per distinct file, then the manifest, then the pointer.
    assert set(_keys(s3_endpoint, bucket, "objects/")) == {
        f"hashsvc/objects/{digest}" for digest in _digests(first.manifest)}
    assert set(_keys(s3_endpoint, bucket, "manifests/")) == {
        f"hashsvc/manifests/{first.version}.json"}
    assert replica.current_in_repository() == first.version
    # Loaded memory-mapped from the replica's cache.
    assert "replica-cache" in str(snapshot.path)


def test_a_small_change_moves_only_the_objects_that_changed(
    served: tuple[Runtime, S3Repository, Any], home: DataHome
) -> None:
    replica, repository, first = served
    downloaded = _sample("hashsvc_snapshot_fetched_objects_total")
    _add_md5(home, 3)
    second = _publish(home, repository)
    changed = _digests(second.manifest) - _digests(first.manifest)
    # The PDQ index did not change, so neither its objects are uploaded nor downloaded again.
    assert second.manifest["files"]["pdq.mih.codes.npy"] == first.manifest["files"][
        "pdq.mih.codes.npy"]
    assert 0 < len(changed) < len(second.manifest["files"])
    assert second.uploaded_objects == len(changed)
    assert replica.reload()
    assert replica.scanner.snapshot is not None
    assert replica.scanner.snapshot.version == second.version
    assert _sample("hashsvc_snapshot_fetched_objects_total") - downloaded == len(changed)


def test_new_pdq_hashes_move_only_the_layer(
    served: tuple[Runtime, S3Repository, Any], home: DataHome
) -> None:
    """New PDQ hashes change every PDQ index file; published as a layer, none of them moves."""
    replica, repository, first = served
    downloaded = _sample("hashsvc_snapshot_fetched_bytes_total")
    code = bytes(range(32))
    with SqliteStore(home.store_path) as store:
        store.add_entries("known", [NewEntry("pdq", code, "new")])
    second = _publish(home, repository)
    moved = {name for name, entry in second.manifest["files"].items()
             if entry not in first.manifest["files"].values()}
    assert moved and all(name.startswith("layer.") for name in moved)
    # Files with the same bytes (two empty string tables, say) are one object.
    layer_bytes = sum({second.manifest["files"][name]["sha256"]: second.manifest["files"][name][
        "bytes"] for name in moved}.values())
    assert second.uploaded_bytes == layer_bytes
    assert replica.reload()
    assert _sample("hashsvc_snapshot_fetched_bytes_total") - downloaded == layer_bytes
    with SqliteStore(home.store_path) as store:  # the replica's store has no newer change
        assert not store.changes_since(second.manifest["store_revision"]).changed
    matcher = replica.scanner.matcher
    assert matcher is not None
    hits = matcher.match([Query(HashValue("pdq", code))]).matches
    assert [m.external_id for m in hits] == ["new"]


@pytest.mark.parametrize(("damage", "reason"), [("corrupt", "corrupt"), ("truncate", "partial"),
                                                ("delete", "missing")])
def test_a_damaged_object_is_refused_and_the_old_version_keeps_serving(
    served: tuple[Runtime, S3Repository, Any], home: DataHome, s3_endpoint: str, bucket: str,
    damage: str, reason: str, caplog: pytest.LogCaptureFixture,
) -> None:
    replica, repository, first = served
    _add_md5(home, 2)
    second = _publish(home, repository)
    digest = sorted(_digests(second.manifest) - _digests(first.manifest))[0]
    key = f"hashsvc/objects/{digest}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    if damage == "delete":
        client.delete_object(Bucket=bucket, Key=key)
    else:
        damaged = bytes([body[0] ^ 0xFF]) + body[1:] if damage == "corrupt" else body[:-1]
        client.put_object(Bucket=bucket, Key=key, Body=damaged)
    before = _failures(reason)
    with caplog.at_level(logging.ERROR, logger="hashsvc.runtime"):
        _ticks(replica)
    assert replica.scanner.snapshot is not None
    assert replica.scanner.snapshot.version == first.version  # the old one keeps serving
    assert _failures(reason) - before == 1  # refused once, not retried every pass
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused snapshot")]
    assert len(refusals) == 1
    assert digest[:12] in refusals[0].__dict__["error"]
    assert reason in refusals[0].__dict__["error"] or damage == "corrupt"


def test_an_unreachable_bucket_leaves_the_replica_serving_and_says_so(
    home: DataHome, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, endpoint = start_moto()
    bucket = new_bucket(endpoint)
    _seed(home)
    first = _publish(home, _repository(endpoint, bucket, tmp_path / "publisher-cache"))
    replica = _replica(home, endpoint, bucket, tmp_path / "replica-cache")
    try:
        assert replica.reload()
        server.stop()
        before = _failures("unavailable")
        with caplog.at_level(logging.INFO, logger="hashsvc.runtime"):
            for _ in range(3):
                replica.reload()
                replica.tick()
        assert replica.scanner.snapshot is not None
        assert replica.scanner.snapshot.version == first.version
        assert _failures("unavailable") - before >= 3
        assert _sample("hashsvc_snapshot_pointer_age_seconds") > 0
        outages = [r for r in caplog.records
                   if r.getMessage().startswith("snapshot repository unavailable")]
        assert len(outages) == 1  # logged when it starts, not on every pass
        assert bucket in outages[0].__dict__["error"] and SECRET not in caplog.text
        # A replica (re)started during the outage serves what its cache holds.
        restarted = _replica(home, endpoint, bucket, tmp_path / "replica-cache")
        try:
            assert restarted.reload()
            assert restarted.scanner.snapshot is not None
            assert restarted.scanner.snapshot.version == first.version
        finally:
            restarted.stop()
    finally:
        replica.stop()


def test_the_pointer_is_polled_with_jitter_and_never_by_the_watcher(
    served: tuple[Runtime, S3Repository, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    replica = served[0]
    reads = 0
    read = replica.repository.current_version

    def counted() -> str | None:
        nonlocal reads
        reads += 1
        return read()

    monkeypatch.setattr(replica.repository, "current_version", counted)
    for _ in range(PASSES):
        replica.tick()  # the watcher's 0.1 s passes: store changes only, no bucket reads
    assert reads == 0
    interval = replica.repository.poll_interval
    waits = [replica.next_poll_wait() for _ in range(PASSES)]
    assert all(0.5 * interval <= wait <= 1.5 * interval for wait in waits)
    assert len(set(waits)) > 1  # drawn afresh each time: replicas do not poll in step


def test_garbage_collection_keeps_what_the_pointer_and_keep_need(
    home: DataHome, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    import datetime as dt

    _seed(home)
    repository = S3Repository(f"s3://{bucket}/hashsvc", cache_dir=tmp_path / "cache",
                              endpoint_url=s3_endpoint, orphan_grace=dt.timedelta(0))
    results = []
    for count in range(4):
        _add_md5(home, count + 1)
        results.append(_publish(home, repository, keep=2))
    kept = results[-2:]
    assert set(_keys(s3_endpoint, bucket, "manifests/")) == {
        f"hashsvc/manifests/{r.version}.json" for r in kept}
    used = set().union(*(_digests(r.manifest) for r in kept))
    assert set(_keys(s3_endpoint, bucket, "objects/")) == {f"hashsvc/objects/{d}" for d in used}
    # The first publish was the base of the layered ones after it: its manifest is gone, its
    # files are not (the kept versions name them), and a new replica loads the newest.
    assert "layer" not in results[0].manifest and all("layer" in r.manifest for r in kept)
    assert _digests(results[0].manifest) <= used
    fresh = _repository(s3_endpoint, bucket, tmp_path / "fresh-cache")
    with fresh.checkout(kept[-1].version) as (directory, _):
        assert load(directory).entry_count == kept[-1].manifest["counts"]["entries"]
    # A pointer naming an old version keeps it and its objects, whatever `keep` says.
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=bucket, Key="hashsvc/current", Body=f"{kept[0].version}\n".encode())
    repository.collect_garbage(keep=1)
    assert set(_keys(s3_endpoint, bucket, "objects/")) == {f"hashsvc/objects/{d}" for d in used}
    # The publisher's local copies are pruned the same way.
    assert {p.name for p in (tmp_path / "cache" / "versions").iterdir()} == {
        r.version for r in kept}


def test_the_replica_cache_keeps_only_what_it_serves(
    served: tuple[Runtime, S3Repository, Any], home: DataHome, tmp_path: Path
) -> None:
    replica, repository, _ = served
    for count in range(3):
        _add_md5(home, count + 1)
        latest = _publish(home, repository)
        assert replica.reload()
    previous = latest  # the last two served stay; older ones and their objects go
    cache = tmp_path / "replica-cache"
    versions = sorted(p.name for p in (cache / "versions").iterdir())
    assert previous.version in versions and len(versions) == 2
    linked = {p.name for p in (cache / "objects").iterdir()}
    named = set()
    for version in versions:
        named |= _digests(json.loads((cache / "versions" / version / "manifest.json").read_text()))
    assert linked == named


def test_the_server_serves_from_a_bucket_and_bad_buckets_are_one_line_errors(
    home: DataHome, s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    _seed(home)
    url = f"s3://{bucket}/hashsvc"
    publish_cli = [sys.executable, "-m", "indexer", "--home", str(home.root), "publish",
                   "--snapshots", url, "--s3-endpoint-url", s3_endpoint]
    done = subprocess.run(publish_cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["version"]
    server = ServerProcess(home.root, "--snapshots", url, "--s3-endpoint-url", s3_endpoint,
                           "--snapshot-cache", str(tmp_path / "server-cache"),
                           "--snapshot-poll-interval", "0.2", "--workers", "2")
    try:
        with Client(server.target, api_key=server.keys["admin"]) as client:
            assert client.index_status().version == version
            hit = client.scan_hashes([("pdq", (1).to_bytes(32, "big").hex())])
            assert "k1" in [m.external_id for m in hit.matches]
        assert "hashsvc_snapshot_fetched_objects_total" in server.scrape()
    finally:
        server.stop()
    # A bucket that does not exist, and an endpoint with a password in it: one line, no secret.
    wrong = [*publish_cli[:-4], "--snapshots", "s3://no-such-bucket-here/x",
             "--s3-endpoint-url", s3_endpoint.replace("http://", "http://user:hunter2@")]
    failed = subprocess.run(wrong, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0
    assert "no-such-bucket-here" in failed.stderr and "Traceback" not in failed.stderr
    assert "hunter2" not in failed.stderr and SECRET not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1


def test_the_start_up_log_redacts_a_password_in_an_endpoint(tmp_path: Path) -> None:
    config = ServerConfig(home=tmp_path, snapshots="s3://bucket/prefix",
                          s3_endpoint_url="https://user:hunter2@minio.internal:9000")
    described = json.dumps(config.describe())
    assert "hunter2" not in described and "minio.internal:9000" in described
    assert "s3://bucket/prefix" in described


def test_the_repository_benchmark_smoke() -> None:
    """loadtests/bench_repository.py, as the README runs it, at 20,000 entries."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "loadtests" / "bench_repository.py"),
                           "--smoke"],
                          capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    second = report["second_fetch"]
    assert second["entries"] == report["first_fetch"]["entries"] + 10
    assert second["downloaded_objects"] == report["second_publish"]["uploaded_objects"]
    # New PDQ hashes: a layer, and only its files move; the full republish moves the index.
    assert report["second_layered"] and "pdq.mih.codes.npy" in report["unchanged_files"]
    assert all(name.startswith("layer.") for name in report["changed_files"])
    assert 0 < report["second_fetch_share_of_snapshot"] < 0.05
    assert report["full_fetch"]["entries"] == second["entries"]
    assert report["layered_over_full_downloaded_bytes"] < 0.05
