"""Finding entries: ListEntries / GetEntry through the real server and client, and
`indexer entries list|show|export`, whose export goes back in through `indexer import`."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import Client, InvalidArgument, NotFound, PermissionDenied
from hashsvc_client.v1 import types_pb2

from hashsvc.home import DataHome
from hashsvc.snapshot import publish
from hashsvc.store import EntrySelector, NewEntry, SqliteStore
from tests.conftest import run_indexer
from tests.server_process import ServerProcess


def _pdq(n: int) -> bytes:
    return n.to_bytes(32, "big")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("entries")
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("ncmec")
        store.create_bank("other")
        store.add_entries("ncmec", [NewEntry("pdq", _pdq(n), f"n-{n}", {"case": n})
                                    for n in range(1, 251)])
        store.add_entries("other", [NewEntry("md5", bytes(range(16)), "o-1")])
        store.set_disabled("ncmec", EntrySelector(external_ids=["n-7"]), True, "fp 881")
        publish(store, home / "snapshots")
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


def test_list_entries_pages_through_every_entry_once(admin: Client) -> None:
    first = admin.list_entries(banks=["ncmec"], page_size=100)
    assert len(first.entries) == 100 and first.next_page_token
    every = list(admin.iter_entries(banks=["ncmec"], page_size=100))
    assert [e.external_id for e in every] == [f"n-{n}" for n in range(1, 251)]
    assert len({e.id for e in every}) == 250
    entry = every[0]
    assert (entry.bank, entry.hash.algorithm, entry.hash.hex) == (
        "ncmec", types_pb2.ALGORITHM_PDQ, _pdq(1).hex())
    assert dict(entry.metadata) == {"case": 1.0}


def test_list_entries_filters(admin: Client) -> None:
    (disabled,) = admin.list_entries(banks=["ncmec"], disabled=True).entries
    assert (disabled.external_id, disabled.disabled, disabled.disabled_reason) == (
        "n-7", True, "fp 881")
    assert len(list(admin.iter_entries(disabled=False, page_size=1000))) == 250
    (by_hash,) = admin.list_entries(hash=("md5", bytes(range(16)).hex())).entries
    assert (by_hash.bank, by_hash.external_id) == ("other", "o-1")
    (by_id,) = admin.list_entries(external_id="n-42").entries
    assert admin.get_entry(by_id.id) == by_id


def test_list_and_get_entry_errors_are_precise(server: ServerProcess, admin: Client) -> None:
    with pytest.raises(NotFound, match=r"no bank named 'nope'"):
        admin.list_entries(banks=["nope"])
    with pytest.raises(InvalidArgument, match=r"invalid page token"):
        admin.list_entries(page_token="not-a-token")
    with pytest.raises(InvalidArgument, match=r"page size 1001 is out of range 1..1000"):
        admin.list_entries(page_size=1001)
    with pytest.raises(InvalidArgument, match=r"invalid pdq hash"):
        admin.list_entries(hash=("pdq", "00"))
    with pytest.raises(NotFound, match=r"no entry with id 999999"):
        admin.get_entry(999_999)
    with (Client(server.target, api_key=server.keys["scanner"]) as scanner,
          pytest.raises(PermissionDenied)):
        scanner.list_entries()


def test_cli_list_show_and_export_round_trip_through_import(
    home: DataHome, tmp_path: Path
) -> None:
    run_indexer(home, "bank", "create", "src", check=True)
    listing = tmp_path / "list.csv"
    listing.write_text("algorithm,hash,external_id,source\n"
                       + "".join(f"pdq,{_pdq(n).hex()},x-{n},feed {n}\n" for n in range(1, 6))
                       + f"md5,{'ab' * 16},,\n")
    run_indexer(home, "import", "src", str(listing), check=True)
    run_indexer(home, "disable", "src", "--external-id", "x-2", "--reason", "fp", check=True)

    page = run_indexer(home, "entries", "list", "--bank", "src", "--limit", "2", "--json",
                       check=True)
    records = [json.loads(line) for line in page.stdout.splitlines()]
    assert [r["external_id"] for r in records] == ["x-1", "x-2"]
    token = page.stderr.split("--page-token ")[1].split()[0]
    rest = run_indexer(home, "entries", "list", "--bank", "src", "--page-token", token,
                       check=True)
    assert [line.split("\t")[4] for line in rest.stdout.splitlines()] == ["x-3", "x-4", "x-5",
                                                                          "-"]
    disabled = run_indexer(home, "entries", "list", "--disabled", check=True).stdout
    assert disabled.count("\n") == 1 and "disabled (fp)" in disabled
    shown = json.loads(run_indexer(home, "entries", "show", str(records[0]["id"]),
                                   check=True).stdout)
    assert shown["metadata"] == {"source": "feed 1"} and shown["bank"] == "src"
    missing = run_indexer(home, "entries", "show", "999")
    assert missing.returncode == 4 and "no entry with id 999" in missing.stderr

    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"export.{fmt}"
        run_indexer(home, "entries", "export", "src", "--format", fmt, "-o", str(out),
                    check=True)
        run_indexer(home, "bank", "create", f"copy-{fmt}", check=True)
        run_indexer(home, "import", f"copy-{fmt}", str(out), check=True)
        copied = [json.loads(line) for line in run_indexer(
            home, "entries", "list", "--bank", f"copy-{fmt}", "--json", check=True
        ).stdout.splitlines()]
        original = [json.loads(line) for line in run_indexer(
            home, "entries", "list", "--bank", "src", "--json", check=True).stdout.splitlines()]
        keys = ("algorithm", "hash", "external_id", "metadata")
        assert [[c[k] for k in keys] for c in copied] == [[o[k] for k in keys] for o in original]
    with (tmp_path / "export.csv").open() as handle:
        assert next(csv.reader(handle)) == ["algorithm", "hash", "external_id", "metadata"]
