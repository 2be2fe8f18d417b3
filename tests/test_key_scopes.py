"""Keys scoped to banks, through the real server: a scoped key sees, matches and administers
its banks only, and learns nothing of the others (not their names, entries or counts)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import Client, NotFound, PermissionDenied

from hashsvc.errors import HashsvcError
from hashsvc.keys import add_key, read_keys
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.server_process import ServerProcess

BRIDGE = random.Random(1).randbytes(32)  # far apart: ~128 bits between any two
COASTER = random.Random(2).randbytes(32)


def _hex(value: bytes) -> tuple[str, str]:
    return ("pdq", value.hex())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("scopes")
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("ncmec")
        store.create_bank("gifct")
        store.create_bank("stock", kind="allowlist")
        store.add_entries("ncmec", [NewEntry("pdq", BRIDGE, "n-bridge"),
                                    NewEntry("pdq", COASTER, "n-coaster")])
        store.add_entries("gifct", [NewEntry("pdq", BRIDGE, "g-bridge")])
        store.add_entries("stock", [NewEntry("pdq", COASTER, "s-coaster")])
        publish(store, home / "snapshots")
    scoped = {"platform": (["scan"], ["ncmec"]), "platform-b": (["scan"], ["ncmec", "stock"]),
              "ncmec-admin": (["admin"], ["ncmec", "ghost"])}
    secrets = {name: add_key(home / "keys.toml", name, roles, banks)
               for name, (roles, banks) in scoped.items()}
    with ServerProcess(home) as process:
        process.keys.update(secrets)
        yield process


def _client(server: ServerProcess, name: str) -> Client:
    return Client(server.target, api_key=server.keys[name])


def test_a_scoped_key_matches_only_its_banks(server: ServerProcess) -> None:
    with _client(server, "scanner") as everyone, _client(server, "platform") as platform:
        assert sorted(m.bank for m in everyone.scan_hashes([_hex(BRIDGE)]).matches) == [
            "gifct", "ncmec"]
        assert [m.bank for m in platform.scan_hashes([_hex(BRIDGE)]).matches] == ["ncmec"]
        # The allowlist outside its scope neither suppresses nor shows itself...
        unscoped = everyone.scan_hashes([_hex(COASTER)])
        assert not unscoped.matched and [m.bank for m in unscoped.allowlisted] == ["stock"]
        result = platform.scan_hashes([_hex(COASTER)])
        assert [m.bank for m in result.matches] == ["ncmec"] and not result.allowlisted
        # ...and the same stream path, whose items run on pool threads.
        (item,) = platform.scan_images([("i1", [_hex(BRIDGE)])])
        assert [m.bank for m in item.result.matches] == ["ncmec"]
    with _client(server, "platform-b") as with_allowlist:  # an allowlist in scope applies
        result = with_allowlist.scan_hashes([_hex(COASTER)])
        assert not result.matched and [m.bank for m in result.allowlisted] == ["stock"]


def test_a_bank_outside_the_scope_is_answered_as_if_it_did_not_exist(
    server: ServerProcess,
) -> None:
    with _client(server, "platform") as platform:
        with pytest.raises(NotFound) as hidden:
            platform.scan_hashes([_hex(BRIDGE)], banks=["gifct"])
        with pytest.raises(NotFound) as missing:
            platform.scan_hashes([_hex(BRIDGE)], banks=["nonesuch"])
    assert str(hidden.value).replace("gifct", "X") == str(missing.value).replace("nonesuch", "X")


def test_admin_calls_respect_the_scope(server: ServerProcess) -> None:
    with _client(server, "ncmec-admin") as admin, _client(server, "admin") as root:
        assert [b.name for b in admin.list_banks()] == ["ncmec"]
        assert {e.external_id for e in admin.iter_entries()} == {"n-bridge", "n-coaster"}
        gifct_entry = next(iter(root.iter_entries(banks=["gifct"])))
        for call in (lambda: admin.list_entries(banks=["gifct"]),
                     lambda: admin.set_entries_disabled("gifct", external_ids=["g-bridge"]),
                     lambda: admin.remove_entries("gifct", external_ids=["g-bridge"]),
                     lambda: admin.add_entries("gifct", [(_hex(COASTER), "x", None)]),
                     lambda: admin.delete_bank("gifct"),
                     lambda: admin.update_bank("gifct", description="mine now")):
            with pytest.raises(NotFound, match=r"no bank named 'gifct'"):
                call()
        with pytest.raises(NotFound, match=rf"no entry with id {gifct_entry.id}$"):
            admin.get_entry(gifct_entry.id)
        with pytest.raises(PermissionDenied, match=r"cannot name a bank 'elsewhere'"):
            admin.create_bank("elsewhere")
        with pytest.raises(PermissionDenied, match=r"cannot name a bank 'elsewhere'"):
            admin.update_bank("ncmec", new_name="elsewhere")
        counts = admin.index_status().counts
        assert (counts.entries, dict(counts.by_algorithm), list(counts.by_bank)) == (
            2, {"pdq": 2}, ["ncmec"])
        assert root.index_status().counts.entries == 4
        # Nothing above changed the banks it cannot see.
        assert [e.disabled for e in root.iter_entries(banks=["gifct"])] == [False]


def test_keys_file_and_cli_scope(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    added = subprocess.run(
        [sys.executable, "-m", "hashsvc", "keys", "add", "p", "--role", "scan", "--bank", "b2",
         "--bank", "b1", "--keys-file", str(keys_file)], capture_output=True, text=True,
        timeout=60)
    assert added.returncode == 0, added.stderr
    assert 'banks = ["b1", "b2"]' in keys_file.read_text()
    listed = subprocess.run([sys.executable, "-m", "hashsvc", "keys", "list", "--keys-file",
                             str(keys_file)], capture_output=True, text=True, timeout=60)
    assert listed.stdout == "p\tscan\tb1,b2\n"
    (key,) = read_keys(keys_file)
    assert key.banks == frozenset({"b1", "b2"})
    bad = tmp_path / "bad.toml"
    for value in ("[]", '["no spaces allowed"]', '"b1"'):
        bad.write_text(f'[[keys]]\nname = "q"\nroles = ["scan"]\nbanks = {value}\n'
                       f'sha256 = "{"0" * 64}"\n')
        with pytest.raises(HashsvcError, match=r"keys\[0\] \(q\): "):
            read_keys(bad)
