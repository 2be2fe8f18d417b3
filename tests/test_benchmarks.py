"""The benchmark kit's smoke form: proves the commands in the README still run and still measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_import_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_import.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(result.stdout)
    assert report["lines"] == 20_000 and report["hashes_per_second"] > 0
