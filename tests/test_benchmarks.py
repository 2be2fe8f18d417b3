"""The benchmark kit's smoke form: proves the commands in the README still run and still measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[1]


def test_core_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_core.py"), "all", "--smoke"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    results = {r["benchmark"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert results["pdq-hash-speed"]["hashes_per_second_per_core"] > 0
    snapshot = results["snapshot-build"]
    # A quarter of the codes are near-duplicates, a few exact: distinct hashes are most, not all.
    assert snapshot["entries"] * 0.7 < snapshot["distinct_hashes"] <= snapshot["entries"]
    assert snapshot["snapshot_bytes"] > snapshot["entries"] * 32
    assert results["pdq-false-positives"]["pairs"] == 60 * 59 // 2


def test_import_benchmark_smoke(postgres: PostgresServer) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_import.py"), "--smoke",
         "--store", postgres.url()],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["lines"] == 20_000 and report["hashes_per_second"] > 0
    # Both contenders imported every line (each round asserts it); the table names them all.
    assert report["naive"]["hashes_per_second"] > 0 and report["ratio_vs_naive"] > 0
    assert report["hma_reference_adds_per_second"] == 150
    assert "naive csv + sqlite3" in result.stdout and "not measured" in result.stdout
    assert report["postgres"]["hashes_per_second"] > 0 and "--store postgresql://" in result.stdout


def test_store_writes_benchmark_smoke() -> None:
    """Starts its own PostgreSQL server; both contenders' writes must all have committed."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_store_writes.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["committed"] == 40 and report["ratio_with_to_without"] > 0
    assert set(report["ms_per_write"]) == {"with key", "without key"}


def test_snapshot_benchmark_smoke() -> None:
    """Publishes, FAISS builds and a real server start on loopback, at 20,000 entries."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_snapshot.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["entries"] == 20_000
    assert 0 < report["snapshot_load_seconds"] < report["serving_seconds"]
    assert report["publish_seconds"] > 0 and report["faiss_build_seconds"] > 0
    assert report["publish_max_rss_mib"] > 0 and report["publish_cpu_seconds"] > 0
    assert report["faiss_load_seconds"] >= 0  # a 20,000-code read can round to 0
    assert "health SERVING" in result.stdout
