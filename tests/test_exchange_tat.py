"""The tat exchange against a local stand-in for Tech Against Terrorism's hash list API on
127.0.0.1: the token sign-in (`token-auth/tcap/`) and the v2 list (`api/hash-list/v2/all`)
in the JSON python-threatexchange's client reads (`count`, `next`, `previous`, `checkpoint`,
`results` of entries with `deleted` flags), with the errors a real server gives: 401, 429 with
Retry-After, 5xx, a page with a bad entry and a truncated page."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.store import EntryQuery, Store
from hashsvc.store.exchange_model import Credentials
from indexer.exchanges.sync import sync_bank
from indexer.exchanges.tat import TATExchange
from tests.conftest import run_indexer
from tests.stand_in import StandInHandler, serving

USER, PASSWORD, TOKEN = "analyst", "pa55word", "jwt-token-1"
PDQ_1, MD5_2, MD5_VIDEO, PDQ_4 = "a1" * 32, "b2" * 16, "c3" * 16, "d4" * 32


def _entry(entry_id: int, digest: str, algorithm: str = "PDQ", *, file_type: str = "png",
           ideology: str = "islamist", deleted: bool = False) -> dict[str, Any]:
    return {"hash_digest": digest, "algorithm": algorithm, "ideology": ideology,
            "file_type": file_type, "deleted": deleted, "updated_on": 1_700_000_000.0 + entry_id,
            "created_on": "2026-11-01T00:00:00Z", "id": entry_id}


def _page(entries: list[dict[str, Any]], checkpoint: str, following: str | None) -> bytes:
    return json.dumps({"count": 5, "next": following, "previous": None,
                       "checkpoint": checkpoint, "results": entries}).encode()


FIRST = _page([_entry(1, PDQ_1), _entry(2, MD5_2, "MD5", file_type="jpg", ideology="far-right"),
               _entry(3, MD5_VIDEO, "MD5", file_type="mp4")],
              "1700000003,3", "limit=3&offset=3")
SECOND = _page([_entry(2, MD5_2, "MD5", file_type="jpg", deleted=True),
                _entry(1, PDQ_1, ideology="far-right"), _entry(4, PDQ_4)],
               "1700000009,4", None)
BAD_ENTRY = SECOND.replace(PDQ_4.encode(), b"not-a-hash")
AFTER_ALL = _page([], "", None)


class _StandIn(StandInHandler):
    """Signs in USER:PASSWORD; answers list pages by `after` from a queue per page: (status,
    body); the last answer of a queue repeats. Records every request: (method, path)."""

    answers: ClassVar[dict[str, list[tuple[int, bytes]]]] = {}
    requests: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:  # the names http.server calls
        _StandIn.requests.append(("POST", self.path))
        form = urllib.parse.parse_qs(
            self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
        if self.path != "/token-auth/tcap/":
            self._answer(404, b'{"detail": "Not found."}')
        elif form.get("username") == [USER] and form.get("password") == [PASSWORD]:
            self._answer(200, json.dumps({"user": {"username": USER}, "token": TOKEN}).encode())
        else:
            self._answer(401, b'{"detail": "Invalid credentials."}')

    def do_GET(self) -> None:
        _StandIn.requests.append(("GET", self.path))
        url = urllib.parse.urlsplit(self.path)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._answer(401, b'{"detail": "Authentication credentials were not provided."}')
        elif url.path != "/api/hash-list/v2/all":
            self._answer(404, b'{"detail": "Not found."}')
        else:
            after = urllib.parse.parse_qs(url.query).get("after", [""])[0]
            queue = _StandIn.answers[after]
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            self._answer(status, body)



@pytest.fixture
def tat_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _StandIn.requests, _StandIn.answers = [], {}
    monkeypatch.setenv("TAT_CREDENTIALS", f"{USER}:{PASSWORD}")
    with serving(_StandIn) as url:
        yield f"{url}"


def _bind(store: Store, url: str) -> None:
    store.create_bank("tat")
    store.bind_exchange("tat", "tat", {"base_url": url}, Credentials("env", "TAT_CREDENTIALS"))


def _entries(store: Store) -> dict[str, tuple[str, str, list[str]]]:
    """{upstream id: (algorithm, hash hex, upstream tags)} of the bank's entries."""
    found = {}
    for entry in store.list_entries(EntryQuery(banks=("tat",))).entries:
        meta = entry.metadata or {}
        found[meta["upstream_id"]] = (entry.algorithm, entry.hash.hex(),
                                      meta.get("upstream_tags", []))
    return found


def _gets(after: str | None = None) -> list[str]:
    """The `after` of every list request (of those asking for `after`, if given)."""
    cursors = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("after", [""])[0]
               for method, path in _StandIn.requests if method == "GET"]
    return [c for c in cursors if after is None or c == after]


def test_pages_are_retried_refused_whole_when_bad_and_resumed_with_deletions(
    any_store: Store, tat_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # as a server's logs would show it: no credential
    # page 2: rate-limited, then a server error (both retried by the client), then a page with
    # an entry whose hash is not one, then one cut off mid-document, then whole
    _StandIn.answers = {"": [(200, FIRST)],
                        "1700000003,3": [(429, b""), (502, b""), (200, BAD_ENTRY),
                                         (200, SECOND[: len(SECOND) // 2]), (200, SECOND)],
                        "1700000009,4": [(200, AFTER_ALL)]}
    _bind(any_store, tat_url)
    first = {"1": ("pdq", PDQ_1, ["islamist"]), "2": ("md5", MD5_2, ["far-right"])}

    with pytest.raises(HashsvcError, match=r"entry 3 of the page \(id '4'\): invalid pdq hash"
                       r".*page refused, nothing applied"):
        sync_bank(any_store, "tat")
    assert _gets() == ["", "1700000003,3", "1700000003,3", "1700000003,3"]
    assert len(_StandIn.requests) == 6  # a sign-in before each of the two pages
    assert _entries(any_store) == first  # the video's MD5 is not kept
    checkpoint = any_store.exchange_bindings("tat")[0].checkpoint
    assert json.loads(checkpoint or "{}") == {"after": "1700000003,3"}

    with pytest.raises(HashsvcError, match=r"fetch failed \(JSONDecodeError.*next sync resumes"):
        sync_bank(any_store, "tat")
    assert _entries(any_store) == first
    assert any_store.exchange_bindings("tat")[0].checkpoint == checkpoint

    resumed = sync_bank(any_store, "tat")
    assert _gets()[-1] == "1700000003,3"  # after the last page applied
    assert (resumed.pages, resumed.totals.added, resumed.totals.updated,
            resumed.totals.deleted) == (1, 1, 1, 1)
    assert _entries(any_store) == {"1": ("pdq", PDQ_1, ["far-right"]),
                                   "4": ("pdq", PDQ_4, ["islamist"])}

    again = sync_bank(any_store, "tat")  # an empty page keeps the cursor: nothing written
    assert _gets()[-1] == "1700000009,4" and again.pages == 0
    assert json.loads(any_store.exchange_bindings("tat")[0].checkpoint or "{}") == {
        "after": "1700000009,4"}
    assert caplog.records and not [r for r in caplog.records
                                   if USER in r.getMessage() or PASSWORD in r.getMessage()]


def test_a_refused_sign_in_applies_nothing_and_never_shows_the_password(
    store: Store, tat_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _StandIn.answers = {"": [(200, FIRST)]}
    _bind(store, tat_url)
    monkeypatch.setenv("TAT_CREDENTIALS", f"{USER}:wrong-pa55")
    with pytest.raises(HashsvcError, match=r"fetch failed \(HTTPError: 401 .*token-auth"
                       ) as raised:
        sync_bank(store, "tat")
    assert "wrong-pa55" not in str(raised.value)
    assert _StandIn.requests == [("POST", "/token-auth/tcap/")]  # a sign-in is not retried
    assert store.exchange_bindings("tat")[0].checkpoint is None and not _entries(store)

    monkeypatch.setenv("TAT_CREDENTIALS", "no-colon")
    with pytest.raises(HashsvcError, match="must be USERNAME:PASSWORD"):
        sync_bank(store, "tat")


def test_server_errors_are_retried_a_bounded_number_of_times(store: Store, tat_url: str) -> None:
    _StandIn.answers = {"": [(503, b"")]}
    _bind(store, tat_url)
    with pytest.raises(HashsvcError, match=r"fetch failed \(RetryError"):
        sync_bank(store, "tat")
    assert len(_gets()) == 5  # the client's 4 retries, then it gives up
    assert store.exchange_bindings("tat")[0].checkpoint is None


def test_a_binding_takes_only_what_tat_uses_and_no_feedback() -> None:
    credentials = Credentials("env", "TAT_CREDENTIALS")
    with pytest.raises(HashsvcError, match="does not take environment"):
        TATExchange({"environment": "NGO"}, credentials)
    with pytest.raises(HashsvcError, match="plain http only on loopback"):
        TATExchange({"base_url": "http://tat.example"}, credentials)
    assert not hasattr(TATExchange, "send_feedback")  # TAT's API takes no opinions


def test_cli_binds_and_syncs_tat_without_showing_the_password(
    home: DataHome, tat_url: str
) -> None:
    _StandIn.answers = {"": [(200, FIRST)], "1700000003,3": [(200, AFTER_ALL)]}
    run_indexer(home, "bank", "create", "tat", check=True)
    wrong = run_indexer(home, "exchange", "bind", "tat", "--type", "tat", "--environment",
                        "NGO")
    assert wrong.returncode != 0 and "does not take environment" in wrong.stderr
    run_indexer(home, "exchange", "bind", "tat", "--type", "tat", "--base-url", tat_url,
                "--credentials-env", "TAT_CREDENTIALS", check=True)
    synced = run_indexer(home, "exchange", "sync", "tat", check=True)
    assert json.loads(synced.stdout)["added"] == 2
    status = run_indexer(home, "exchange", "status", "tat", check=True)
    assert json.loads(status.stdout)["credentials"] == "env:TAT_CREDENTIALS"
    for output in (wrong, synced, status):
        assert PASSWORD not in output.stdout + output.stderr
        assert "Traceback" not in output.stderr
    assert PASSWORD.encode() not in home.store_path.read_bytes()


def test_a_long_retry_after_is_waited_out_for_at_most_a_minute_by_every_client() -> None:
    """urllib3 would honour a Retry-After of 6 hours, holding the sync's writer lock that
    long; the StopNCII, TAT and NCMEC clients' sessions cap the wait."""
    from threatexchange.exchanges.clients.ncmec import hash_api
    from threatexchange.exchanges.clients.stopncii import api as stopncii_api
    from threatexchange.exchanges.clients.techagainstterrorism import api as tat_api
    from urllib3 import HTTPResponse

    from indexer.exchanges.ncmec import capped_client
    from indexer.exchanges.stopncii import _page_keeping_client
    from indexer.exchanges.tat import _quiet_client
    from indexer.exchanges.web_api import MAX_RETRY_AFTER_S

    throttled = HTTPResponse(status=429, headers={"Retry-After": str(6 * 3600)})
    stopncii = _page_keeping_client(stopncii_api)("subscription", "fetch")
    ncmec = capped_client(hash_api)("user", "password", hash_api.NCMECEnvironment.Industry)
    sessions = [stopncii._get_session(stopncii_api.StopNCIIEndpoint.FetchHashes),
                ncmec._get_session()]
    with _quiet_client(tat_api)("user", "password")._get_session() as tat_session:
        sessions.append(tat_session)
        for session in sessions:
            retries = [a.max_retries for a in session.adapters.values()
                       if a.max_retries.status_forcelist]
            assert retries, "the client's own retry policy is kept"
            assert {r.get_retry_after(throttled) for r in retries} == {MAX_RETRY_AFTER_S}
            assert {r.total for r in retries} == {4}
