"""The standing fault suite (issue 12), CI-sized: fuzz, chaos and soak, each run as a person
runs it, with fixed seeds, and bounded by counts of inputs, kills and calls, never by time.

Each test runs one command of the suite in a child process and reads its JSON report. A failure
lists what broke, by input name (`python -m loadtests.fuzz --only NAME` replays one) or by check,
so that it can be traced to the defect it reproduces. The full-size runs, whose figures the
README's Reliability section quotes, are the same commands with larger numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]
SEED = 12

pytestmark = [pytest.mark.fault_suite, pytest.mark.slow]


def run_tool(tmp_path: Path, *command: str) -> tuple[int, dict[str, Any], str]:
    """One command of the suite; returns its exit code, its JSON report and its output."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, *command, "--json", str(report)], cwd=ROOT, capture_output=True,
        text=True, timeout=900, env={**os.environ, "HASHSVC_SHARED_DATA": str(DATA)},
    )
    output = done.stdout + done.stderr
    assert report.exists(), f"{command} wrote no report (exit {done.returncode}):\n{output}"
    return done.returncode, json.loads(report.read_text()), output


def _failures(report: dict[str, Any]) -> str:
    return "\n".join(f"  {f['input']} [{f['path']}] {f['outcome']} ({f['kind']}): {f['message']}"
                     for f in report["failures"])


# Per mode: generated images (plus the recipes), hash lists, hostile ScanHashes hashes,
# and processes (the decoders fork a child per input and path, two at a time).
FUZZ_SIZES = {"decoders": ("100", "0", "0", "2"), "importer": ("0", "200", "0", "1"),
              "server": ("40", "40", "60", "1")}


@pytest.mark.parametrize("mode", list(FUZZ_SIZES))
def test_fuzz_breaks_no_guarantee(mode: str, tmp_path: Path) -> None:
    """No UNKNOWN, traceback, hang, crash, memory over budget, partial import or recipe input
    let through, over a few hundred hostile inputs."""
    images, lists, hashes, jobs = FUZZ_SIZES[mode]
    code, report, output = run_tool(
        tmp_path, "-m", "loadtests.fuzz", "--modes", mode, "--seed", str(SEED), "--inputs",
        images, "--lists", lists, "--hashes", hashes, "--jobs", jobs)
    tally = report["modes"][mode]
    assert not tally["failures"], (f"{tally['failed']} failing run(s) in {mode}; by kind "
                                   f"{tally['failure_kinds']}:\n{_failures(tally)}")
    assert code == 0, output
    # The run did real work: inputs were accepted and inputs were refused, for reasons.
    assert tally["counts"]["ok"] > 0 and tally["counts"]["invalid_argument"] > 0, tally["counts"]


def test_chaos_kills_publishes_and_bad_snapshots(tmp_path: Path) -> None:
    """SIGKILLed imports and publishes lose and leave nothing, publishes under load fail no
    call, and every bad snapshot is refused, counted, and leaves the old one serving."""
    code, report, output = run_tool(
        tmp_path, "loadtests/chaos.py", "--seed", str(SEED), "--entries", "20000",
        "--import-kills", "2", "--import-lines", "600000", "--publish-kills", "3",
        "--max-kill-delay", "1.5", "--publishes", "3", "--load-calls", "100")
    failed = "\n".join(f"  {c['section']}: {c['check']}: {c['detail']}"
                       for c in report["checks"] if not c["ok"])
    assert not failed, f"chaos checks failed:\n{failed}"
    assert any(c["check"] == "killed while the parser was busy" for c in report["checks"])
    assert code == 0, output
    assert report["publishes_under_load"]["calls"] > 0


def test_soak_bounded_by_calls(tmp_path: Path) -> None:
    """A mixed load of 1,200 calls on two workers: no call fails, every process is sampled.
    (RSS growth is judged by the full-length soak; a short run is still warming up.)"""
    code, report, output = run_tool(
        tmp_path, "loadtests/soak.py", "--seed", str(SEED), "--calls", "1200", "--entries",
        "20000", "--workers", "2", "--round-calls", "150", "--max-growth-mb", "512")
    assert report["error_count"] == 0, f"failed calls: {report['errors']}"
    assert report["total_calls"] >= 1200
    assert set(report["calls"]) >= {"scan-image", "scan-hashes", "stream", "hash-image",
                                    "admin"}, report["calls"]
    assert sum(role.startswith("worker") for role in report["processes"]) == 2, report
    assert code == 0, output
