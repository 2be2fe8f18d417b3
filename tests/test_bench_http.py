"""`loadtests/bench_http.py` in its smoke form: a few calls a round, over both protocols, against
the real server it starts; every call answered and matched. Never timing: only that the tool
measures what it says it measures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hashsvc.keys import add_key
from loadtests.make_snapshot import build_home

ROOT = Path(__file__).resolve().parents[1]
CALLS = 6


def test_bench_http_reports_http_beside_grpc_with_every_call_matched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    build_home(home, 2_000)
    key = add_key(home / "keys.toml", "bench", ["scan"])
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_http.py"), "--home", str(home),
         "--rounds", "2", "--calls", str(CALLS), "--concurrency", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "HASHSVC_API_KEY": key},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {figure["figure"]: figure for figure in json.loads(out.read_text())}
    assert set(figures) == {"scan-image", "scan-hashes"}
    for name, figure in figures.items():
        assert set(figure["rows"]) == {"gRPC", "HTTP"}
        for protocol, row in figure["rows"].items():
            # Two rounds of exactly CALLS calls, each answered and matched (the listed photo
            # and its hash), over each protocol.
            assert (row["calls"], row["ok"], row["matched"], row["errors"]) == (
                2 * CALLS, 2 * CALLS, 2 * CALLS, 0), (name, protocol, row)
            # CPU is read from /proc in clock ticks (10 ms): a few cheap calls may show none.
            assert row["calls_per_second"] > 0 and row["server_cpu_ms_per_call"] >= 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert figure["ratio"] > 0 and figure["server_cpu_ratio"] >= 0
        assert "ratio HTTP / gRPC" in result.stdout
