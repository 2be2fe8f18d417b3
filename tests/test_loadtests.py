"""The load-test kit's smoke form: the commands a person runs still drive the real server.

One small home (2,000 PDQ entries plus the known photo, built in-process with make_snapshot), one
real server on loopback, then loadgen in each mode and a headless Locust run, all at once as child
processes so that the smoke costs a few seconds, not the sum of the runs. Each run must do real
work, with no errors, and match what the home lists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loadtests import upload_corpus
from loadtests.make_snapshot import KNOWN_FILE, build_home
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
LOADGEN = ROOT / "loadtests" / "loadgen.py"
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
MODES = ("scan-image", "scan-hashes", "stream")
# Smoke runs are bounded by calls, never by a time window: a busy machine makes them slower,
# not empty (a 1-second window once completed no call at all).
CALLS = 24
# A dev dependency: missing, its test fails (never skips), since CI must prove the locustfile runs.
LOCUST_INSTALLED = importlib.util.find_spec("locust") is not None


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    result: Any  # loadgen: its JSON object; locust: its --json-file stats list


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("loadtest-home")
    summary = build_home(home, 2_000)
    assert summary["added"] == 2_001
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def runs(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every run at once, as a person would type them; returns each one's outcome by name."""
    out = tmp_path_factory.mktemp("loadtest-out")
    env = {**os.environ, "HASHSVC_API_KEY": server.keys["scanner"]}
    known = str(server.home / KNOWN_FILE)
    commands: dict[str, list[str]] = {
        mode: [sys.executable, str(LOADGEN), mode, "--target", server.target,
               "--concurrency", "4", "--calls", str(CALLS), "--json", str(out / f"{mode}.json"),
               *(["--batch", "5", "--known-hashes", known, "--match-fraction", "0.5"]
                 if mode == "scan-hashes" else [])]
        for mode in MODES
    }
    if LOCUST_INSTALLED:  # otherwise its test fails, saying so; the loadgen tests still run
        commands["locust"] = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "2",
            "-r", "2", "--calls", str(CALLS), "--host", server.target, "--only-summary",
            "--json-file", str(out / "locust"), "--known-hashes", known,
        ]
    outcomes: dict[str, Run] = {}
    with ExitStack() as stack:
        processes = {
            name: stack.enter_context(subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                cwd=out,  # not the repository: the scripts must find their own imports
            ))
            for name, command in commands.items()
        }
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=120)
            path = out / (f"{name}.json")
            result = json.loads(path.read_text()) if path.exists() else None
            outcomes[name] = Run(process.returncode, stdout, stderr, result)
    return outcomes


@pytest.mark.parametrize("mode", MODES)
def test_loadgen_mode_does_real_work_without_errors(runs: dict[str, Run], mode: str) -> None:
    run = runs[mode]
    assert run.returncode == 0, run.stderr
    result = run.result
    assert result == json.loads(run.stdout.splitlines()[-1])  # printed and written alike
    assert (result["mode"], result["concurrency"], result["channels"]) == (mode, 4, 4)
    assert result["requests"] == result["ok"] == result["issued_total"] == CALLS
    assert result["stopped_by"] == "max-requests"
    assert result["throughput_per_second"] > 0
    assert result["errors"] == {} and result["error_count"] == 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert result["matched"] > 0  # the known photo (images) and known hashes are listed
    assert "p99 ms" in run.stdout  # the table
    if mode == "scan-hashes":
        assert result["hashes_per_second"] == pytest.approx(
            result["throughput_per_second"] * 5, rel=0.01)
    else:
        image = result["image"]
        assert image["megapixels"] == pytest.approx(1.0, abs=0.05) and image["bytes"] > 10_000
        assert f"{image['width']}x{image['height']}" in run.stdout


def test_locust_headless_run_reports_calls_without_failures(runs: dict[str, Run]) -> None:
    assert LOCUST_INSTALLED, "locust is missing: it is a dev dependency (pip install -e '.[dev]')"
    run = runs["locust"]
    assert run.returncode == 0, run.stderr
    stats = {entry["name"]: entry for entry in run.result}
    assert set(stats) == {"ScanHashes", "ScanImage"}, run.stderr
    for name, entry in stats.items():
        assert entry["method"] == "grpc"
        assert entry["num_requests"] > 0, name
        assert entry["num_failures"] == 0, name


@pytest.mark.parametrize("target", ["10.0.0.1:50051", "0.0.0.0:50051", "192.168.1.5:443"])
def test_loadgen_refuses_targets_off_loopback(target: str) -> None:
    result = subprocess.run(
        [sys.executable, str(LOADGEN), "scan-hashes", "--target", target, "--duration", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "forbids" in result.stderr


@pytest.mark.parametrize("figure", ["scan-hashes", "scan-image"])
def test_bench_service_prints_baseline_and_hashsvc_side_by_side(
    server: ServerProcess, tmp_path: Path, figure: str
) -> None:
    """The issue's "one command per figure": it starts its own servers (baseline and hashsvc)
    over the small home and reports both with a ratio, with no failed call."""
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_service.py"), figure,
         "--home", str(server.home), "--rounds", "1", "--calls", "12",
         "--concurrency", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HASHSVC_API_KEY": server.keys["admin"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (report,) = json.loads(out.read_text())
    assert report["baseline"] != report["subject"] and set(report["rows"]) == {
        report["baseline"], report["subject"]}
    for row in report["rows"].values():
        assert row["median"] > 0 and row["errors"] == 0
    assert report["ratio"] > 0 and "HMA (issue, quoted)" in result.stdout


def test_bench_service_scans_an_upload_corpus(server: ServerProcess, tmp_path: Path) -> None:
    """`scan-image --corpus`: both servers hash the same real-encoder files (JPEG, PNG, WebP,
    AVIF, a screenshot), each once per round, with no failed call."""
    missing = upload_corpus.missing_tools()
    if missing:
        pytest.skip(f"encoders not installed: apt-get install -y {' '.join(missing)}")
    corpus = tmp_path / "corpus"
    upload_corpus.build(corpus, count=8, seed=1,
                        kinds=["web-jpeg", "png", "webp", "avif", "screenshot"])
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "loadtests" / "bench_service.py"), "scan-image",
         "--corpus", str(corpus), "--home", str(server.home), "--rounds", "1", "--calls", "8",
         "--concurrency", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HASHSVC_API_KEY": server.keys["admin"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (report,) = json.loads(out.read_text())
    assert "upload corpus" in report["title"] and "first 8 files" in report["title"]
    for row in report["rows"].values():
        assert row["median"] > 0 and row["errors"] == 0 and row["server_cpu_ms_per_call"] > 0
