"""Chaos, bad snapshots: `current` pointed at broken copies of the good snapshot.

A broken copy (truncated array, manifest without `files`, manifest as a JSON array, fewer rows
than the manifest with checksums that match) must be refused and counted in
hashsvc_snapshot_load_failures_total while the known hashes keep matching; an intact copy under
another name must be loaded once (or refused once), not in a loop; and pointing `current` back
must serve the good one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from hashsvc_client import Client
from hashsvc_client.errors import HashsvcClientError

from hashsvc.snapshot import current_version
from hashsvc.snapshot.loading import sha256_file
from loadtests import loadgen
from loadtests.checks import Report, serve, wait_for
from loadtests.make_snapshot import KNOWN_FILE
from tests.server_process import ServerProcess

BAD_SNAPSHOTS = ("truncated_array", "manifest_without_files", "manifest_json_array",
                 "fewer_rows", "copied_dir")


def _switch_current(snapshots: Path, version: str) -> None:
    pending = snapshots / "current.chaos"
    pending.write_text(version + "\n")
    pending.replace(snapshots / "current")


def _metric(server: ServerProcess, name: str) -> float:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", server.scrape(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def break_snapshot(directory: Path, kind: str) -> None:
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    ids = directory / "entries.ids.npy"
    if kind == "truncated_array":
        with ids.open("r+b") as handle:
            handle.truncate(ids.stat().st_size // 2)
    elif kind == "manifest_without_files":
        del manifest["files"]
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "manifest_json_array":
        manifest_path.write_text(json.dumps([manifest]))
    elif kind == "fewer_rows":  # checksums made to match: only the lengths tell
        rows = np.load(ids)
        np.save(ids, rows[: len(rows) // 2])
        manifest["files"]["entries.ids.npy"] = {"sha256": sha256_file(ids),
                                                "bytes": ids.stat().st_size}
        manifest_path.write_text(json.dumps(manifest))


def _scan_known(server: ServerProcess, known: list[str]) -> tuple[int, int]:
    """(errors, misses) over scans of hashes the good snapshot lists."""
    errors = misses = 0
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        for value in known:
            try:
                misses += not client.scan_hashes([("pdq", value)]).matches
            except HashsvcClientError:
                errors += 1
    return errors, misses


def bad_snapshots(report: Report, home: Path, args: argparse.Namespace) -> None:
    snapshots = home / "snapshots"
    good = current_version(snapshots)
    assert good is not None
    known = loadgen.read_known_hashes(home / KNOWN_FILE)[:20]
    refused = 0
    with serve(home, "--workers", "1", "--reload-interval", "0.1") as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        for kind in BAD_SNAPSHOTS:
            section = f"bad snapshot {kind}"
            name = f"{good}-copy-{kind}"
            shutil.copytree(snapshots / good, snapshots / name)
            break_snapshot(snapshots / name, kind)
            failures = _metric(server, "hashsvc_snapshot_load_failures_total")
            loads = _metric(server, "hashsvc_snapshot_load_duration_seconds_count")
            _switch_current(snapshots, name)
            wait_for(lambda f=failures, n=loads: (  # type: ignore[misc]
                _metric(server, "hashsvc_snapshot_load_failures_total") > f
                or _metric(server, "hashsvc_snapshot_load_duration_seconds_count") > n), 30, 0.1)
            if kind == "copied_dir":  # loading it (by its own name) or refusing it are both fine
                time.sleep(20 * 0.1)  # twenty reload intervals: a loop would load ~20 times
                count = _metric(server, "hashsvc_snapshot_load_duration_seconds_count") - loads
                refusals = _metric(server, "hashsvc_snapshot_load_failures_total") - failures
                errors, misses = _scan_known(server, known)
                report.check(section, "loaded once or refused once, never in a loop",
                             count <= 1 and refusals <= 1 and errors == 0 and misses == 0,
                             f"{count:g} loads, {refusals:g} refusals in 20 reload intervals; "
                             f"{errors} errors, {misses} misses in {len(known)} scans")
            else:
                counted = _metric(server, "hashsvc_snapshot_load_failures_total") - failures
                report.check(section, "refused and counted", counted >= 1,
                             f"hashsvc_snapshot_load_failures_total {counted:+g}")
                refused += counted >= 1
                errors, misses = _scan_known(server, known)
                report.check(section, "old snapshot still serving", errors == 0 and misses == 0
                             and admin.index_status().version == good,
                             f"{errors} errors, {misses} misses in {len(known)} scans")
            _switch_current(snapshots, good)
            back = wait_for(lambda: admin.index_status().version == good, 30, 0.1)
            errors, misses = _scan_known(server, known)
            report.check(section, "pointing current back serves the good one",
                         back and errors == 0 and misses == 0,
                         f"serving {admin.index_status().version}; {errors} errors, "
                         f"{misses} misses in {len(known)} scans")
            shutil.rmtree(snapshots / name)
    report.figures["bad_snapshots"] = {"kinds": len(BAD_SNAPSHOTS) - 1, "refused": refused}
