"""Syncing a bank from a hash list that changes between syncs, on every store backend; a sync
killed with SIGKILL inside a page's transaction; the CLI verbs and a list served over HTTP."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from hashsvc.errors import HashsvcError, WriterBusyError
from hashsvc.home import DataHome
from hashsvc.store import EntryQuery, NewEntry, Store, open_store
from indexer.exchanges.sync import sync_bank
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, run_indexer, scan_until
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess


def _md5(n: int) -> str:
    return n.to_bytes(16, "big").hex()


def _write_list(path: Path, numbers: range | list[int]) -> None:
    path.write_text("algorithm,hash,external_id\n"
                    + "".join(f"md5,{_md5(n)},item-{n}\n" for n in numbers))


def _bank_hashes(store: Store, bank: str) -> list[str]:
    page = store.list_entries(EntryQuery(banks=(bank,), limit=1000))
    return sorted(entry.hash.hex() for entry in page.entries)


def test_a_changing_list_syncs_additions_and_deletions(any_store: Store, tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(25))
    any_store.create_bank("tat")
    any_store.bind_exchange("tat", "file", {"source": str(listing), "page_size": 10})

    first = sync_bank(any_store, "tat")
    assert (first.pages, first.totals.added, first.totals.deleted) == (3, 25, 0)
    assert _bank_hashes(any_store, "tat") == sorted(_md5(n) for n in range(25))
    revision = any_store.revision()
    again = sync_bank(any_store, "tat")
    assert again.pages == 0 and any_store.revision() == revision  # nothing new, nothing written

    _write_list(listing, [*range(5, 25), 100, 101, 102])
    changed = sync_bank(any_store, "tat")
    totals = changed.totals
    assert (totals.added, totals.deleted, totals.unchanged) == (3, 5, 20)
    assert _bank_hashes(any_store, "tat") == sorted(_md5(n) for n in [*range(5, 25), 100, 101,
                                                                      102])
    [entry] = any_store.list_entries(EntryQuery(banks=("tat",), external_id="item-100")).entries
    [seen] = any_store.entry_provenance(entry.id)
    assert (seen.exchange, seen.upstream_id) == ("file", f"md5:{_md5(100)}")


def test_a_list_with_a_bad_line_applies_nothing(any_store: Store, tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(3))
    any_store.create_bank("b")
    any_store.bind_exchange("b", "file", {"source": str(listing)})
    sync_bank(any_store, "b")
    listing.write_text(listing.read_text() + "md5,nothex,x\n")
    where = re.escape(f"{listing}:5: invalid md5")
    with pytest.raises(HashsvcError, match=rf"nothing was applied.*{where}"):
        sync_bank(any_store, "b")
    listing.write_text("algorithm,hash,external_id\n")
    with pytest.raises(HashsvcError, match="lists no hashes"):
        sync_bank(any_store, "b")
    assert len(_bank_hashes(any_store, "b")) == 3


_KILLED_SYNC = """
import os, signal, sys
from hashsvc.store import open_store
from indexer.exchanges import open_exchange
from indexer.exchanges.sync import sync_bank

class DiesInThirdPage:
    # The file exchange, except that the process kills itself with SIGKILL after handing the
    # store five entries of the third page: inside that page's open transaction.
    def __init__(self, inner):
        self.inner, self.pages = inner, 0
    def fetch(self, checkpoint):
        page = self.inner.fetch(checkpoint)
        self.pages += 1
        if self.pages == 3:
            entries = list(page.upserts)
            def dying():
                yield from entries[:5]
                os.kill(os.getpid(), signal.SIGKILL)
            page = type(page)(dying(), page.checkpoint, page.more, page.deletions, page.listing,
                              page.ends_listing)
        return page

with open_store(sys.argv[1]) as store:
    binding = store.exchange_bindings("ncmec")[0]
    sync_bank(store, "ncmec", exchange=DiesInThirdPage(open_exchange(binding)))
"""


def test_a_sync_killed_mid_page_resumes_without_loss_or_duplicates(
    any_store: Store, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(35))
    any_store.create_bank("ncmec")
    any_store.bind_exchange("ncmec", "file", {"source": str(listing), "page_size": 10})
    killed = subprocess.run([sys.executable, "-c", _KILLED_SYNC, any_store.target],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    checkpoint = json.loads(any_store.exchange_bindings("ncmec")[0].checkpoint or "{}")
    assert (checkpoint["offset"], checkpoint["done"]) == (20, False)  # two pages, not three
    assert _bank_hashes(any_store, "ncmec") == sorted(_md5(n) for n in range(20))

    resumed = sync_bank(any_store, "ncmec")
    assert (resumed.pages, resumed.totals.added, resumed.totals.unchanged) == (2, 15, 0)
    assert _bank_hashes(any_store, "ncmec") == sorted(_md5(n) for n in range(35))


class _ListServer(BaseHTTPRequestHandler):
    body = b""
    token = "s3cret-token"

    def do_GET(self) -> None:  # the name http.server calls
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def list_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ListServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/list.csv"
    server.shutdown()
    server.server_close()


def test_cli_binds_syncs_and_never_shows_the_token(
    home: DataHome, tmp_path: Path, list_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(4))
    _ListServer.body = listing.read_bytes()
    run_indexer(home, "bank", "create", "gifct", check=True)
    run_indexer(home, "exchange", "bind", "gifct", "--type", "url", "--source", list_server,
                "--credentials-env", "GIFCT_TOKEN", check=True)

    leaky = run_indexer(home, "exchange", "bind", "gifct", "--type", "url", "--source",
                        list_server.replace("//", "//user:hunter2@"))
    assert leaky.returncode == 3 and "must not hold a password" in leaky.stderr
    assert b"hunter2" not in home.store_path.read_bytes()

    monkeypatch.setenv("GIFCT_TOKEN", "wrong")
    refused = run_indexer(home, "exchange", "sync", "gifct")
    assert refused.returncode != 0 and "answered HTTP 401" in refused.stderr
    assert "Traceback" not in refused.stderr

    monkeypatch.setenv("GIFCT_TOKEN", _ListServer.token)
    synced = run_indexer(home, "exchange", "sync", check=True)
    assert json.loads(synced.stdout)["added"] == 4
    status = run_indexer(home, "exchange", "status", "gifct", check=True)
    record = json.loads(status.stdout)
    assert record["credentials"] == "env:GIFCT_TOKEN" and record["checkpoint"]["done"]
    for output in (synced.stdout, synced.stderr, status.stdout, status.stderr):
        assert _ListServer.token not in output
    assert _ListServer.token.encode() not in home.store_path.read_bytes()

    unbound = run_indexer(home, "exchange", "sync", "nope")
    assert unbound.returncode != 0 and "'nope' is not bound" in unbound.stderr

    listed = run_indexer(home, "entries", "list", "--bank", "gifct", "--json", check=True)
    entry_id = json.loads(listed.stdout.splitlines()[0])["id"]
    shown = json.loads(run_indexer(home, "entries", "show", str(entry_id), check=True).stdout)
    [origin] = shown["provenance"]
    assert origin["exchange"] == "url" and origin["upstream_id"] == f"md5:{_md5(0)}"

    # every bank: one whose list is gone fails alone, the others still sync
    run_indexer(home, "bank", "create", "local", check=True)
    run_indexer(home, "exchange", "bind", "local", "--type", "file", "--source",
                str(tmp_path / "gone.csv"), check=True)
    both = run_indexer(home, "exchange", "sync")
    assert both.returncode == 1 and "local: sync failed: file exchange: cannot read" in both.stderr
    assert [json.loads(line)["bank"] for line in both.stdout.splitlines()] == ["gifct", "local"]
    assert "Traceback" not in both.stderr


def test_a_second_sync_of_a_postgresql_store_is_refused_while_one_runs(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(3))
    target = postgres.new_database()
    with open_store(target) as first, open_store(target) as second:
        first.create_bank("b")
        first.bind_exchange("b", "file", {"source": str(listing)})
        with first.writer_lock("sync"), pytest.raises(WriterBusyError, match="sync"):
            sync_bank(second, "b")
        assert second.get_bank("b").entry_count == 0
        assert sync_bank(second, "b").totals.added == 3


class _FlakyServer(BaseHTTPRequestHandler):
    """Answers from a script, one answer per request: (status, body, Content-Length)."""

    script: ClassVar[list[tuple[int, bytes, int]]] = []
    requests: ClassVar[int] = 0

    def do_GET(self) -> None:  # the name http.server calls
        status, body, length = _FlakyServer.script[min(_FlakyServer.requests,
                                                       len(_FlakyServer.script) - 1)]
        _FlakyServer.requests += 1
        self.send_response(status)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from indexer.exchanges import file_list

    monkeypatch.setattr(file_list, "MAX_RETRY_WAIT", 0.0)  # the count is the test, not the wait
    _FlakyServer.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/list.csv"
    server.shutdown()
    server.server_close()


def test_a_url_list_is_retried_and_never_applied_truncated(
    store: Store, tmp_path: Path, flaky_server: str
) -> None:
    listing = tmp_path / "list.csv"
    _write_list(listing, range(6))
    whole = listing.read_bytes()
    truncated = whole[: len(whole) // 2]  # ends mid-list: parsed, it would delete half
    _FlakyServer.script = [(429, b"", 0), (503, b"", 0), (200, truncated, len(whole)),
                           (200, whole, len(whole))]
    store.create_bank("b")
    store.bind_exchange("b", "url", {"source": flaky_server})
    assert sync_bank(store, "b").totals.added == 6
    assert _FlakyServer.requests == 4

    _write_list(listing, range(3))
    _FlakyServer.requests = 0
    _FlakyServer.script = [(200, listing.read_bytes()[:40], len(listing.read_bytes()))]
    with pytest.raises(HashsvcError, match=r"IncompleteRead \(4 attempts\); the next sync"):
        sync_bank(store, "b")
    assert _FlakyServer.requests == 4
    _FlakyServer.script = [(404, b"", 0)]
    with pytest.raises(HashsvcError, match="answered HTTP 404"):
        sync_bank(store, "b")
    assert len(_bank_hashes(store, "b")) == 6  # nothing deleted by a list never read whole


def test_a_synced_addition_and_deletion_reach_a_running_server_without_a_publish(
    home: DataHome, tmp_path: Path
) -> None:
    from hashsvc_client import Client

    pen, bridge = (IMAGES / "pen-and-coaster.png").read_bytes(), BRIDGE_ORIGINAL.read_bytes()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{hashlib.md5(pen).hexdigest()}\n{hashlib.md5(bridge).hexdigest()}\n")
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                "--algorithm", "md5", check=True)
    with ServerProcess(home.root) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        synced = run_indexer(home, "exchange", "sync", "feed", check=True)
        assert "live on running servers within about a second" in synced.stderr
        assert "feed: page 1 applied (2 added, 0 deleted so far)" in synced.stderr
        match = scan_until(client, pen, matched=True).matches[0]
        assert dict(match.metadata) == {"exchange": "file",
                                        "upstream_id": f"md5:{hashlib.md5(pen).hexdigest()}"}
        listing.write_text(f"{hashlib.md5(bridge).hexdigest()}\n")
        synced = run_indexer(home, "exchange", "sync", "feed", check=True)
        assert json.loads(synced.stdout)["deleted"] == 1
        scan_until(client, pen, matched=False)
        assert client.scan_image(bridge).matched


@pytest.mark.parametrize("verb", ["bind", "sync", "status"])
def test_every_exchange_verb_has_help_with_an_example(home: DataHome, verb: str) -> None:
    result = run_indexer(home, "exchange", verb, "--help")
    assert result.returncode == 0 and "example:\n  indexer exchange " in result.stdout


def test_get_and_list_entries_return_provenance_over_grpc(home: DataHome, tmp_path: Path) -> None:
    from hashsvc_client import Client

    listing = tmp_path / "list.csv"
    _write_list(listing, [1, 2])
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "bank", "create", "manual", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                check=True)
    run_indexer(home, "exchange", "sync", "feed", check=True)
    with open_store(home.store_path) as store:
        store.add_entries("manual", [NewEntry("md5", bytes(16), "by-hand")])
    with ServerProcess(home.root) as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        page = admin.list_entries(banks=["feed"], upstream_id=f"md5:{_md5(2)}")
        [entry] = page.entries
        [origin] = entry.provenance
        assert (origin.exchange, origin.upstream_id) == ("file", f"md5:{_md5(2)}")
        assert 0 < origin.first_seen <= origin.last_seen
        assert admin.get_entry(entry.id).provenance == entry.provenance
        assert len(admin.list_entries(exchange="file").entries) == 2
        [by_hand] = admin.list_entries(banks=["manual"]).entries
        assert not by_hand.provenance  # imported or added by hand: no exchange behind it
