"""Metrics, the audit log, and multi-process serving, against the real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from hashsvc_client import Client, InvalidArgument, Unauthenticated
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from hashsvc.audit import AuditLog
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.conftest import IMAGES, PHOTOS
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank

ROOT = Path(__file__).resolve().parents[1]
EDIT = (IMAGES / "bridge-mods" / "blur-a-lot.jpg").read_bytes()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """The sum of `name`'s samples that have these labels, whatever their others (e.g. the
    requests of both protocols where `protocol` is not given)."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items()
               if sample == name and wanted <= set(have))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("observed")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


def test_metrics_count_calls_stages_matches_and_rejections(server: ServerProcess) -> None:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        for _ in range(3):
            client.scan_image(EDIT)
        client.scan_image(sorted(PHOTOS.glob("*.jpg"))[0].read_bytes())
        client.scan_hashes([("pdq", BRIDGE_PDQ)])
        with pytest.raises(InvalidArgument):
            client.scan_image(b"not an image")
    with Client(server.target, api_key="hsk_bad") as stranger, pytest.raises(Unauthenticated):
        stranger.scan_hashes([("pdq", BRIDGE_PDQ)])

    samples = _samples(server.scrape())
    assert _value(samples, "hashsvc_requests_total", method="ScanImage", code="OK",
                  protocol="grpc") == 4
    assert _value(samples, "hashsvc_requests_total", method="ScanImage",
                  code="INVALID_ARGUMENT") == 1
    assert _value(samples, "hashsvc_requests_total", method="ScanHashes", code="OK") == 1
    assert _value(samples, "hashsvc_requests_total", method="ScanHashes",
                  code="UNAUTHENTICATED") == 1
    assert _value(samples, "hashsvc_rejected_requests_total", reason="auth") == 1
    assert _value(samples, "hashsvc_rejected_requests_total", reason="invalid") == 1
    assert _value(samples, "hashsvc_matches_total", bank="bridge", algorithm="pdq") == 4
    assert _value(samples, "hashsvc_request_duration_seconds_count", method="ScanImage") == 5
    for stage, count in (("decode", 4), ("hash", 4), ("search", 5)):
        assert _value(samples, "hashsvc_stage_duration_seconds_count", stage=stage) == count
    assert _value(samples, "hashsvc_image_bytes_count") == 4
    assert _value(samples, "hashsvc_image_pixels_count") == 4
    assert _value(samples, "hashsvc_pdq_quality_count") == 4
    assert _value(samples, "hashsvc_index_entries", algorithm="pdq", bank="bridge") == 1
    assert _value(samples, "hashsvc_snapshot_loaded") == 1
    assert _value(samples, "hashsvc_snapshot_age_seconds") > 0
    # Low cardinality: no label value looks like a hash, a key or an id.
    for (_name, labels), _ in samples.items():
        for _key, value in labels:
            assert not re.fullmatch(r"[0-9a-f]{16,}|hsk_.*|[0-9]{4,}", value), value


def test_in_flight_gauge_rises_while_a_call_runs_and_returns_to_zero(
    server: ServerProcess,
) -> None:
    """The gauge is published by the watcher (not per call): it must still follow the calls."""
    release = threading.Event()

    def items() -> Iterator[scan_pb2.ScanImagesRequest]:
        release.wait(20)  # the stream stays open, and admitted, until the test lets it end
        yield from ()

    def in_flight() -> float:
        return _value(_samples(server.scrape()), "hashsvc_requests_in_flight")

    def wait_for(predicate: Callable[[float], bool]) -> float:
        deadline = time.monotonic() + 5
        while not predicate(value := in_flight()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return value

    with grpc.insecure_channel(server.target) as channel:
        stub = scan_pb2_grpc.ScanServiceStub(channel)
        call = stub.ScanImages(items(), metadata=(
            ("authorization", f"Bearer {server.keys['scanner']}"),), timeout=30)
        assert wait_for(lambda v: v >= 1) == 1
        release.set()
        assert list(call) == []
    assert wait_for(lambda v: v == 0) == 0


def test_successful_calls_are_not_logged_at_info_but_failures_are(
    server: ServerProcess,
) -> None:
    """The per-call INFO line was a fifth of a worker's time under load; failures still log."""
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        client.scan_hashes([("pdq", BRIDGE_PDQ)], request_id="quiet-ok")
        with pytest.raises(InvalidArgument):
            client.scan_image(b"definitely not an image")
    with Client(server.target, api_key="hsk_wrong") as stranger, pytest.raises(Unauthenticated):
        stranger.scan_hashes([("pdq", BRIDGE_PDQ)])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        calls = [r for r in server.records() if r.get("logger") == "hashsvc.rpc"
                 and r.get("message") == "rpc"]
        codes = {(r["method"].rsplit("/", 1)[-1], r["code"]) for r in calls}
        if {("ScanImage", "INVALID_ARGUMENT"), ("ScanHashes", "UNAUTHENTICATED")} <= codes:
            break
        time.sleep(0.05)
    assert ("ScanImage", "INVALID_ARGUMENT") in codes
    assert ("ScanHashes", "UNAUTHENTICATED") in codes
    assert all(r["level"] == "info" and r["code"] != "OK" for r in calls), calls


def test_audit_log_records_matches_with_caller_and_never_keys(server: ServerProcess) -> None:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        client.scan_image(EDIT, request_id="audit-req-1")
        client.scan_image(sorted(PHOTOS.glob("*.jpg"))[1].read_bytes(), request_id="no-match")
        client.scan_hashes([("pdq", BRIDGE_PDQ)], request_id="audit-req-2")
    text = (server.home / "audit.jsonl").read_text()
    records = {r["request_id"]: r for r in map(json.loads, text.splitlines())}
    assert "no-match" not in records  # only matches, unless --audit-all-scans
    image = records["audit-req-1"]
    assert (image["method"], image["caller"], image["matched"]) == ("ScanImage", "scanner", True)
    assert image["snapshot_version"] and len(image["hashes"]["pdq"]) == 64
    (match,) = image["matches"]
    assert (match["bank"], match["external_id"], match["algorithm"], match["threshold"]) == (
        "bridge", "bridge-orig", "pdq", 31)
    assert records["audit-req-2"]["method"] == "ScanHashes"
    assert not any(key in text for key in server.keys.values())


def test_audit_log_survives_concurrent_writers_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    writers, per_writer = 8, 400
    stop_rotating = threading.Event()
    rotated = threading.Event()

    def write(worker: int) -> None:
        for n in range(per_writer):
            if n == per_writer // 2:  # on a loaded machine the writers could outrun rotation
                assert rotated.wait(30), "the rotator never ran"
            audit.write({"worker": worker, "n": n, "padding": "x" * (n % 300)})

    def rotate() -> None:
        generation = 0
        while not stop_rotating.wait(0.005):
            if path.exists():
                generation += 1
                path.rename(tmp_path / f"audit.jsonl.{generation}")  # logrotate's "create" mode
                rotated.set()

    rotator = threading.Thread(target=rotate)
    rotator.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop_rotating.set()
    rotator.join()
    audit.close()
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert len(files) >= 2, "rotation never happened during the writes"
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert sorted((r["worker"], r["n"]) for r in records) == sorted(
        (w, n) for w in range(writers) for n in range(per_writer))


def _metric_names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bhashsvc_[a-z0-9_]+", expression))


def test_alerts_and_dashboard_use_only_metrics_that_exist(server: ServerProcess) -> None:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        client.scan_image(EDIT)  # so that every histogram and labelled counter has a sample
    exported = {name for name, _ in _samples(server.scrape())}
    # Families that need an event the healthy module server never has: declared, zero samples.
    exported |= {"hashsvc_snapshot_load_failures_total", "hashsvc_worker_restarts_total",
                 "hashsvc_rejected_requests_total"}
    # Per quarantined entry's bank; the module server has none (test_flood_guard shows them).
    exported |= {"hashsvc_flood_quarantined_entries", "hashsvc_flood_quarantined_matches_total"}
    # Per exchange-backed bank; the module server has none (test_exchange_health shows them).
    exported |= {"hashsvc_exchange_last_success_timestamp_seconds", "hashsvc_exchange_entries",
                 "hashsvc_exchange_sync_alert_after_seconds", "hashsvc_exchange_sync_failing",
                 "hashsvc_exchange_sync_errors"}
    exported |= {"hashsvc_match_feedback_total"}  # per verdict given (test_feedback shows it)
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in alerts["groups"] for rule in group["rules"]]
    assert len(rules) >= 6 and all({"alert", "expr", "labels", "annotations"} <= set(r)
                                   for r in rules)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hashsvc-dashboard.json").read_text())
    panels = dashboard["panels"]
    expressions = [r["expr"] for r in rules] + [t["expr"] for p in panels for t in p["targets"]]
    referenced = set().union(*map(_metric_names_in, expressions))
    assert referenced, "no hashsvc metric referenced"
    assert referenced <= exported, f"not exported: {sorted(referenced - exported)}"
    from hashsvc import metrics

    declared = {c._name for c in vars(metrics).values() if hasattr(c, "_name")}
    never_shown = {n for n in declared if not any(r.startswith(n) for r in referenced)}
    assert never_shown <= {"hashsvc_snapshot_created_timestamp_seconds",
                           "hashsvc_snapshot_loaded_timestamp_seconds",
                           "hashsvc_snapshot_store_revision",
                           "hashsvc_keys_reload_failures"}, never_shown


def test_several_workers_share_the_port_aggregate_metrics_and_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--workers", "2") as server:
        (serving,) = [r for r in server.records() if r.get("message") == "serving"]
        pids = serving["pids"]
        assert len(pids) == 2
        calls = 40
        for _ in range(calls):  # a new channel each time: the kernel spreads connections
            with Client(server.target, api_key=server.keys["scanner"]) as client:
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        samples = _samples(server.scrape())
        assert _value(samples, "hashsvc_requests_total", method="ScanHashes", code="OK") == calls
        audited = (home / "audit.jsonl").read_text().splitlines()
        assert len(audited) == calls and all(json.loads(line) for line in audited)

        # Hot reload reaches every worker.
        with SqliteStore(home / "store.sqlite") as store:
            store.add_entries("bridge", [NewEntry("pdq", bytes(32), "zeros")])
            publish(store, home / "snapshots")
        deadline = time.monotonic() + 15
        seen = 0
        while seen < 10:
            assert time.monotonic() < deadline, "a worker kept serving the old snapshot"
            with Client(server.target, api_key=server.keys["scanner"]) as client:
                found = client.scan_hashes([("pdq", bytes(32))]).matched
            seen = seen + 1 if found else 0
            time.sleep(0.05)

        # A crashed worker is restarted and the service keeps answering.
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any(r.get("message") == "worker exited; restarting" for r in server.records()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        while sum(r.get("message") == "worker ready" for r in server.records()) < 3:
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        for _ in range(10):
            with Client(server.target, api_key=server.keys["scanner"]) as client:
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert _value(_samples(server.scrape()), "hashsvc_worker_restarts_total") == 1
        assert server.stop() == 0


def test_sigterm_drains_in_flight_streams(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    photos = sorted(PHOTOS.glob("*.jpg"))[:150]
    received: list[str] = []
    with ServerProcess(home, "--workers", "2") as server:
        started = threading.Event()

        def stream() -> None:
            with Client(server.target, api_key=server.keys["scanner"]) as client:
                for response in client.scan_images((p.name, p.read_bytes()) for p in photos):
                    received.append(response.id)
                    started.set()

        thread = threading.Thread(target=stream)
        thread.start()
        assert started.wait(30)
        assert server.stop() == 0  # SIGTERM mid-stream
        thread.join(60)
        assert "draining workers" in server.log
    assert received == [p.name for p in photos]


def test_admin_changes_reach_every_worker_without_a_publish(tmp_path: Path) -> None:
    """The freshness benchmark's smoke form, against two workers: adds and disables become
    visible on every connection without a publish (the benchmark reports how fast)."""
    import subprocess
    import sys

    home = tmp_path / "home"
    _seed_bridge_bank(home)
    current = (home / "snapshots" / "current").read_text()
    with ServerProcess(home, "--workers", "2") as server:
        result = subprocess.run(
            [sys.executable, str(ROOT / "loadtests" / "bench_freshness.py"), "--smoke",
             "--target", server.target, "--api-key", server.keys["admin"]],
            capture_output=True, text=True, timeout=180, check=True,
        )
        summary = json.loads(result.stdout)
        assert summary["rounds"] == 3
        assert summary["add_visible"]["max_ms"] > 0 and summary["disable_visible"]["max_ms"] > 0
    assert (home / "snapshots" / "current").read_text() == current  # no publish happened


def test_serve_imports_no_prometheus_client_before_it_chooses_several_workers() -> None:
    """With several workers the supervisor sets PROMETHEUS_MULTIPROC_DIR first; a module that
    `serve` imports earlier and that pulls in prometheus_client makes the supervisor's own
    counters (worker restarts) vanish from /metrics. The console secret's module once did."""
    probe = ("import sys, hashsvc.cli, hashsvc.server.app, hashsvc.http.console.sessions; "
             "print('prometheus_client' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
