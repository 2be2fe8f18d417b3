"""A keys file that does not load: refused at start, survived (last good keys) while running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hashsvc_client import Client

from tests.server_process import ServerProcess
from tests.test_observability import _samples, _value
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank

BROKEN = '[[keys]]\nname = "a"\nroles = ["scan"\n'  # an unclosed array: not TOML


def test_serve_refuses_to_start_on_a_keys_file_that_does_not_load(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "keys.toml").write_text(BROKEN)
    result = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--home", str(home),
         "--http-listen", "off", "--listen",
         "127.0.0.1:0", "--workers", "2", "--metrics-listen", ""],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"hashsvc: error: {home / 'keys.toml'}: not valid TOML"), result.stderr


def test_a_broken_keys_file_keeps_the_last_good_keys_and_is_reported_once(
    tmp_path: Path,
) -> None:
    """Before the fix every call failed UNKNOWN, one per worker per second, while it was broken."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    keys_file = home / "keys.toml"
    with ServerProcess(home) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        good = keys_file.read_text()
        keys_file.write_text(BROKEN)

        def refused() -> int:
            return sum(r.get("message") == "keys file not loaded; the previous keys stay in "
                       "effect" for r in server.records())

        deadline = time.monotonic() + 60  # hang guard only
        while refused() == 0:
            assert time.monotonic() < deadline, server.log
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched  # the last good keys
            time.sleep(0.2)
        for _ in range(3):  # calls on later re-check ticks: the same broken file, no new report
            time.sleep(1.1)
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert refused() == 1
        samples = _samples(server.scrape())
        assert _value(samples, "hashsvc_keys_file_valid") == 0
        assert _value(samples, "hashsvc_keys_reload_failures_total") == 1

        keys_file.write_text(good)
        while _value(_samples(server.scrape()), "hashsvc_keys_file_valid") != 1:
            assert time.monotonic() < deadline + 60, server.log
            client.scan_hashes([("pdq", BRIDGE_PDQ)])
            time.sleep(0.2)
        assert not any(r.get("code") == "UNKNOWN" for r in server.records())
        assert all(key not in server.log for key in server.keys.values())
