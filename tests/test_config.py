"""Server configuration precedence, and the explicit insecure mode."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hashsvc_client import Client

from hashsvc import config
from hashsvc.errors import HashsvcError
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(flags)


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "hashsvc.toml"
    toml.write_text('listen = "10.0.0.1:1"\nworkers = 3\nstream_window = 5\n'
                    'reload_interval = 2.5\ninsecure_no_auth = true\n')
    environ = {"HASHSVC_CONFIG": str(toml), "HASHSVC_WORKERS": "7",
               "HASHSVC_LISTEN": "10.0.0.2:2", "HASHSVC_HOME": str(tmp_path / "env-home")}
    loaded = config.load(_parse("--listen", "127.0.0.1:9"), environ)
    assert loaded.listen == "127.0.0.1:9"          # flag
    assert loaded.workers == 7               # environment over file
    assert loaded.stream_window == 5                # file
    assert loaded.reload_interval == 2.5 and loaded.insecure_no_auth is True
    assert loaded.home == tmp_path / "env-home"
    assert loaded.max_concurrent_rpcs == 64         # default
    assert loaded.resolved_keys_file == tmp_path / "env-home" / "keys.toml"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HASHSVC_WORKERS": "many"},
         "environment: invalid value 'many' for workers"),
        ({"HASHSVC_INSECURE_NO_AUTH": "maybe"}, "invalid value 'maybe' for insecure_no_auth"),
    ],
)
def test_bad_values_name_the_setting_and_source(environ: dict[str, str], message: str) -> None:
    with pytest.raises(HashsvcError, match=message):
        config.load(_parse(), environ)


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("lisen = 'typo'\n")
    with pytest.raises(HashsvcError, match=r"c.toml: unknown setting 'lisen'"):
        config.load(_parse("--config", str(toml)), {})


def test_insecure_mode_accepts_anonymous_calls_and_warns(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--insecure-no-auth", keys={}) as server, \
            Client(server.target, api_key="") as client:
        assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert client.list_banks()[0].name == "bridge"
        warnings = [r for r in server.records() if r.get("level") == "warning"]
        assert any("authentication is DISABLED" in r["message"] for r in warnings)
    assert not (home / "bootstrap-admin.key").exists()


def test_first_start_creates_an_admin_key_file_not_a_log_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, keys={}) as server:
        key_file = home / "bootstrap-admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        assert key not in server.log and "bootstrap-admin" in server.log
        with Client(server.target, api_key=key) as client:
            assert client.index_status().version
