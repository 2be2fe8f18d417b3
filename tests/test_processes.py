"""`hashsvc serve` as processes: one port, one server; no worker outlives its supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import ServerProcess
from tests.test_server import _seed_bridge_bank


@pytest.fixture(scope="module", params=["1", "2"], ids=["first-1-worker", "first-2-workers"])
def running(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("first")
    _seed_bridge_bank(home)
    with ServerProcess(home, "--workers", request.param) as process:
        yield process


@pytest.mark.parametrize("workers", ["1", "2"], ids=["second-1-worker", "second-2-workers"])
def test_a_second_server_on_a_port_in_use_is_refused_in_one_line(
    running: ServerProcess, tmp_path: Path, workers: str
) -> None:
    """Before the fix, 2 workers started "serving" beside the first (SO_REUSEPORT) and took half
    of the new connections; 1 worker died with a traceback."""
    other_home = tmp_path / "other"
    result = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--home", str(other_home),
         "--http-listen", "off",
         "--listen", running.target, "--workers", workers, "--metrics-listen", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hashsvc: error: cannot listen on {running.target}: address "
                           "already in use"), result.stderr
    assert not (other_home / "keys.toml").exists()  # refused before touching its home
    assert "serving" not in result.stderr


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie nobody reaps counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--workers", "2") as server:
        (serving,) = [r for r in server.records() if r.get("message") == "serving"]
        pids: list[int] = serving["pids"]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
        os.kill(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120  # hang guard only
        while not all(_gone(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.1)


def test_a_taken_http_port_is_refused_in_one_line_naming_the_setting(tmp_path: Path) -> None:
    """The HTTP port is on by default (8080): a user whose 8080 is taken must learn which
    setting to change, without a traceback and before the home is touched."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "hashsvc", "serve", "--home", str(tmp_path / "home"),
             "--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}",
             "--workers", "1", "--metrics-listen", ""],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}" in last and "--http-listen off" in last, last
    assert not (tmp_path / "home" / "store.sqlite").exists()
