"""Hot reload: a version is the name `current` holds; a bad one is refused once and counted.

The watcher's passes are driven directly (`Runtime.tick`), a bounded number of times, so that a
reload loop shows up as a count rather than as a rate over some window of time. One end-to-end
test runs the real server to check what GetIndexStatus reports.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hashsvc_client import Client
from prometheus_client import REGISTRY

from hashsvc.config import ServerConfig
from hashsvc.hashing.algorithms import HashValue
from hashsvc.home import DataHome
from hashsvc.server.runtime import Runtime
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.server_process import ServerProcess
from tests.test_snapshot_loading import resign

KNOWN = bytes(range(32))
PASSES = 25  # watcher passes per step: a reload loop would load (or fail) on every one


def _seed(home: DataHome) -> str:
    """A published store of 3 PDQ entries; returns the version."""
    with SqliteStore(home.store_path) as store:
        store.create_bank("known")
        store.add_entries("known", [NewEntry("pdq", KNOWN, "k0"),
                                    NewEntry("pdq", bytes([9]) * 32, "k1"),
                                    NewEntry("pdq", bytes([3]) * 32, "k2")])
        return publish(store, home.snapshots_dir).version


def _copy(home: DataHome, version: str, name: str) -> Path:
    return Path(shutil.copytree(home.snapshots_dir / version, home.snapshots_dir / name))


def _point_current_at(home: DataHome, name: str) -> None:
    (home.snapshots_dir / "current").write_text(name + "\n")


def _truncate_ids(directory: Path) -> None:
    """Drop the last entry id and re-sign: checksums match, counts do not (issue 12, defect 2)."""
    ids = np.load(directory / "entries.ids.npy")
    np.save(directory / "entries.ids.npy", ids[:-1], allow_pickle=False)
    resign(directory)


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _loads() -> float:
    return _sample("hashsvc_snapshot_load_duration_seconds_count")


def _failures() -> float:
    return _sample("hashsvc_snapshot_load_failures_total")


def _ticks(runtime: Runtime, passes: int = PASSES) -> None:
    for _ in range(passes):
        runtime.tick()


@pytest.fixture
def runtime(home: DataHome) -> Iterator[Runtime]:
    _seed(home)
    served = Runtime(ServerConfig(home=home.root))
    served.reload()
    yield served
    served.stop()


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("refused snapshot")]


def test_a_copy_is_loaded_once_and_pointing_back_is_honoured(
    runtime: Runtime, home: DataHome
) -> None:
    original = runtime.scanner.snapshot
    assert original is not None
    _copy(home, original.version, "copied-by-hand")
    _point_current_at(home, "copied-by-hand")
    loads = _loads()
    _ticks(runtime)
    assert _loads() - loads == 1
    assert runtime.scanner.snapshot is not None
    assert runtime.scanner.snapshot.version == "copied-by-hand"

    _point_current_at(home, original.version)
    _ticks(runtime)
    assert _loads() - loads == 2
    assert runtime.scanner.snapshot.version == original.version


def test_too_few_rows_is_refused_once_and_the_old_snapshot_keeps_serving(
    runtime: Runtime, home: DataHome, caplog: pytest.LogCaptureFixture
) -> None:
    served = runtime.scanner.snapshot
    assert served is not None
    _truncate_ids(_copy(home, served.version, "short"))
    _point_current_at(home, "short")
    loads, failures = _loads(), _failures()
    with caplog.at_level(logging.INFO, logger="hashsvc.runtime"):
        _ticks(runtime)
    assert (_loads() - loads, _failures() - failures) == (0, 1)
    (refusal,) = _refusals(caplog)
    assert "entries.ids.npy holds 2 int64; expected 3 int64" in refusal.__dict__["error"]
    assert runtime.scanner.snapshot is served and runtime.failed_loads == 1
    result = runtime.scanner.scan_hashes([HashValue("pdq", KNOWN)])
    assert [m.external_id for m in result.matches] == ["k0"]
    status = runtime.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
    assert status == health_pb2.HealthCheckResponse.SERVING

    # Back to the good version and then to the bad one again: a new refusal, counted once.
    _point_current_at(home, served.version)
    _ticks(runtime)
    _point_current_at(home, "short")
    _ticks(runtime)
    assert (_loads() - loads, _failures() - failures) == (0, 2)


@pytest.mark.parametrize("manifest", [
    pytest.param(lambda m: [m], id="a JSON array"),
    pytest.param(lambda m: {k: v for k, v in m.items() if k != "files"}, id="no files"),
    pytest.param(lambda m: {**m, "counts": None}, id="no counts"),
])
def test_an_unreadable_manifest_is_counted_logged_once_and_not_retried(
    runtime: Runtime, home: DataHome, caplog: pytest.LogCaptureFixture,
    manifest: Callable[[dict[str, Any]], object],
) -> None:
    served = runtime.scanner.snapshot
    assert served is not None
    bad = _copy(home, served.version, "malformed")
    text = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps(manifest(text)))
    _point_current_at(home, "malformed")
    failures = _failures()
    with caplog.at_level(logging.INFO, logger="hashsvc.runtime"):
        _ticks(runtime)
    assert _failures() - failures == 1
    assert len(_refusals(caplog)) == 1
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback, ever
    assert runtime.scanner.snapshot is served


def test_a_current_naming_a_path_outside_the_snapshots_is_refused(
    runtime: Runtime, home: DataHome
) -> None:
    served = runtime.scanner.snapshot
    _point_current_at(home, f"../snapshots/{served.version if served else ''}")
    failures = _failures()
    _ticks(runtime)
    assert _failures() - failures == 1 and runtime.scanner.snapshot is served


def test_index_status_reports_the_version_current_names(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    version = _seed(home)
    _copy(home, version, "copied-by-hand")
    _truncate_ids(_copy(home, version, "short"))
    with ServerProcess(home.root) as server, \
            Client(server.target, api_key=server.keys["admin"]) as client:
        # (what `current` names, what must then be served, refusals so far)
        for target, served, refused in (("copied-by-hand", "copied-by-hand", 0),
                                        ("short", "copied-by-hand", 1),
                                        (version, version, 1)):
            _point_current_at(home, target)
            deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
            while (status := client.index_status()).current_on_disk != target or (
                    status.version, status.failed_loads) != (served, refused):
                assert time.monotonic() < deadline, (
                    f"current = {target}: serving {status.version}, {status.failed_loads} "
                    f"refused; expected {served}, {refused}")
                time.sleep(0.05)
            assert client.scan_hashes([("pdq", KNOWN)]).matches[0].external_id == "k0"


def test_a_failure_that_repeats_every_pass_is_logged_when_it_starts_and_ends(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_gauge() -> None:
        raise OSError("disk gone")

    runtime.gauge_updaters.append(broken_gauge)
    with caplog.at_level(logging.INFO, logger="hashsvc.runtime"):
        _ticks(runtime)
        runtime.gauge_updaters.remove(broken_gauge)
        _ticks(runtime)
    messages = [(r.getMessage(), bool(r.exc_info)) for r in caplog.records]
    assert messages == [("snapshot watcher pass failed; retrying every pass", True),
                        ("snapshot watcher pass succeeded again", False)]
