"""The stopncii exchange against a local stand-in for StopNCII.org's hash API on 127.0.0.1,
serving FetchHashes pages in the JSON python-threatexchange's client reads (`hashRecords`,
`nextPageToken`, `nextSetTimestamp`, `hasMoreRecords`) and taking SubmitFeedback, with the
errors a real server gives: 401, 429 with Retry-After, 5xx, a malformed and a truncated page."""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from hashsvc.errors import HashsvcError
from hashsvc.store import EntryQuery, Store
from hashsvc.store.exchange_model import Credentials
from indexer.exchanges import open_exchange
from indexer.exchanges.stopncii import StopNCIIExchange
from indexer.exchanges.sync import sync_bank
from tests.stand_in import StandInHandler, serving

FETCH_KEY, SUBSCRIPTION_KEY, FEEDBACK_KEY = "fetch-k3y", "subscr1ption", "feedb4ck"
PDQ_A, PDQ_B, PDQ_C = "a1" * 32, "b2" * 32, "c3" * 32


def _record(hash_value: str, status: str = "Active", signal: str = "ImagePDQ",
            feedbacks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"lastModtimestamp": 1_700_000_000, "signalType": signal, "hashValue": hash_value,
            "hashStatus": status, "caseNumbers": {"case-1": status},
            "CSPFeedbacks": feedbacks or []}


def _page(records: list[dict[str, Any]], *, token: str | None, next_set: int) -> bytes:
    return json.dumps({"count": len(records), "nextPageToken": token,
                       "nextSetTimestamp": next_set, "hasMoreRecords": token is not None,
                       "hashRecords": records}).encode()


BLOCKED = {"feedbackValue": "Blocked", "source": "Example Platform", "tags": ["ncii"]}
FIRST = _page([_record(PDQ_A, feedbacks=[BLOCKED]), _record(PDQ_B, status="Received"),
               _record("d4" * 16, signal="VideoMD5")], token="page-2", next_set=1000)
SECOND = _page([_record(PDQ_B, status="Withdrawn"),
                _record(PDQ_A, feedbacks=[BLOCKED, {"feedbackValue": "NotBlocked",
                                                    "source": "Other", "tags": []}]),
                _record(PDQ_C)], token=None, next_set=2000)
# one record is not a hash record (no status): the client skips it, the page must be refused
MALFORMED = SECOND.replace(b'"hashStatus": "Active", ', b"", 1)
NOTHING_NEW = _page([], token=None, next_set=2000)


class _StandIn(StandInHandler):
    """FetchHashes answers by page (the token, else `start=TIMESTAMP`) from a queue per page:
    (status, body); the last answer of a queue repeats. Records every request."""

    answers: ClassVar[dict[str, list[tuple[int, bytes]]]] = {}
    feedback_answer: ClassVar[tuple[int, bytes]] = (200, b"{}")
    requests: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def do_GET(self) -> None:  # the names http.server calls
        self._serve(b"")

    def do_POST(self) -> None:
        self._serve(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _serve(self, body: bytes) -> None:
        url = urllib.parse.urlsplit(self.path)
        keys = {name: self.headers.get(name, "") for name in
                ("Ocp-Apim-Subscription-Key", "x-functions-key")}
        _StandIn.requests.append((self.command, self.path, keys, body))
        endpoint = url.path.rsplit("/", 1)[-1]
        wanted = FETCH_KEY if endpoint == "FetchHashes" else FEEDBACK_KEY
        if keys != {"Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY, "x-functions-key": wanted}:
            self._answer(401, b'{"statusCode": 401, "message": "Access denied"}')
        elif endpoint == "SubmitFeedback":
            self._answer(*_StandIn.feedback_answer)
        else:
            query = urllib.parse.parse_qs(url.query)
            page = query.get("nextPageToken", [f"start={query['startTimestamp'][0]}"])[0]
            queue = _StandIn.answers.get(page, [(400, b'{"message": "invalid token"}')])
            status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
            self._answer(status, answer)



@pytest.fixture
def stopncii_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _StandIn.requests, _StandIn.answers, _StandIn.feedback_answer = [], {}, (200, b"{}")
    monkeypatch.setenv("STOPNCII_KEYS", f"{FETCH_KEY},{SUBSCRIPTION_KEY},{FEEDBACK_KEY}")
    with serving(_StandIn) as url:
        yield f"{url}/v1"


def _bind(store: Store, url: str) -> None:
    store.create_bank("ncii")
    store.bind_exchange("ncii", "stopncii", {"base_url": url},
                        Credentials("env", "STOPNCII_KEYS"))


def _entries(store: Store) -> dict[str, list[str]]:
    """{upstream id: upstream tags} of the bank's entries (each must be stored under its hash)."""
    found = {}
    for entry in store.list_entries(EntryQuery(banks=("ncii",))).entries:
        meta = entry.metadata or {}
        assert meta["upstream_id"] == entry.hash.hex() and entry.algorithm == "pdq"
        found[meta["upstream_id"]] = meta.get("upstream_tags", [])
    return found


def _checkpoint(store: Store) -> dict[str, Any]:
    return dict(json.loads(store.exchange_bindings("ncii")[0].checkpoint or "{}"))


def test_pages_are_retried_refused_whole_when_bad_and_resumed_with_deletions(
    any_store: Store, stopncii_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # as a server's logs would show it: no key
    # page 2: rate-limited, then a server error (both retried by the client), then a page
    # with a record that does not parse, then one cut off mid-document, then whole
    _StandIn.answers = {"start=10": [(200, FIRST)],
                        "page-2": [(429, b""), (503, b""), (200, MALFORMED),
                                   (200, SECOND[: len(SECOND) // 2]), (200, SECOND)],
                        "start=2000": [(200, NOTHING_NEW)]}
    _bind(any_store, stopncii_url)
    first_tags = ["Blocked:Example-Platform", "ncii", "status:Active"]

    with pytest.raises(HashsvcError, match=r"record 2 of the page is not a StopNCII hash "
                       r"record .*page refused, nothing applied"):
        sync_bank(any_store, "ncii")
    assert len(_StandIn.requests) == 4  # page 1; page 2 three times: 429, 503, malformed
    assert _entries(any_store) == {PDQ_A: first_tags, PDQ_B: ["status:Received"]}
    assert _checkpoint(any_store) == {"start": 10, "next": "page-2", "resume": 1000}

    with pytest.raises(HashsvcError, match=r"fetch failed \(JSONDecodeError.*next sync resumes"):
        sync_bank(any_store, "ncii")
    assert _entries(any_store) == {PDQ_A: first_tags, PDQ_B: ["status:Received"]}
    assert _checkpoint(any_store) == {"start": 10, "next": "page-2", "resume": 1000}

    resumed = sync_bank(any_store, "ncii")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(_StandIn.requests[-1][1]).query)
    assert (query["nextPageToken"], query["startTimestamp"]) == (["page-2"], ["10"])
    assert (resumed.pages, resumed.totals.added, resumed.totals.updated,
            resumed.totals.deleted) == (1, 1, 1, 1)
    assert _entries(any_store) == {
        PDQ_A: ["Blocked:Example-Platform", "NotBlocked:Other", "ncii", "status:Active"],
        PDQ_C: ["status:Active"]}
    assert _checkpoint(any_store) == {"start": 2000, "next": ""}

    again = sync_bank(any_store, "ncii")  # the next listing starts at nextSetTimestamp
    assert "startTimestamp=2000" in _StandIn.requests[-1][1] and again.pages == 0
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert logged and not any(k in logged for k in (FETCH_KEY, SUBSCRIPTION_KEY, FEEDBACK_KEY))


def test_refused_keys_apply_nothing_and_are_never_shown(
    store: Store, stopncii_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _StandIn.answers = {"start=10": [(200, FIRST)]}
    _bind(store, stopncii_url)
    monkeypatch.setenv("STOPNCII_KEYS", f"{FETCH_KEY},wrong-subscription")
    with pytest.raises(HashsvcError, match=r"fetch failed \(HTTPError: 401") as raised:
        sync_bank(store, "ncii")
    assert FETCH_KEY not in str(raised.value) and "wrong-subscription" not in str(raised.value)
    assert len(_StandIn.requests) == 1  # a 401 is not retried
    assert store.exchange_bindings("ncii")[0].checkpoint is None and not _entries(store)

    for bad in ("just-one-key", "a,b,https://elsewhere.example"):
        monkeypatch.setenv("STOPNCII_KEYS", bad)
        with pytest.raises(HashsvcError, match="stopncii credentials") as raised:
            sync_bank(store, "ncii")
        assert bad not in str(raised.value)


def test_server_errors_are_retried_a_bounded_number_of_times(
    store: Store, stopncii_url: str
) -> None:
    _StandIn.answers = {"start=10": [(500, b"")]}
    _bind(store, stopncii_url)
    with pytest.raises(HashsvcError, match=r"fetch failed \(RetryError"):
        sync_bank(store, "ncii")
    assert len(_StandIn.requests) == 5  # the client's 4 retries, then it gives up
    assert store.exchange_bindings("ncii")[0].checkpoint is None


def test_an_expired_page_token_resumes_from_the_timestamp(stopncii_url: str) -> None:
    _StandIn.answers = {"start=1000": [(200, SECOND)]}  # the token "stale" is unknown: 400
    exchange = StopNCIIExchange({"base_url": stopncii_url}, Credentials("env", "STOPNCII_KEYS"))
    page = exchange.fetch(json.dumps({"start": 10, "next": "stale", "resume": 1000}))
    asked = [urllib.parse.parse_qs(urllib.parse.urlsplit(r[1]).query)
             for r in _StandIn.requests]
    assert [q.get("nextPageToken") for q in asked] == [["stale"], None]
    assert asked[1]["startTimestamp"] == ["1000"]
    assert (len(list(page.upserts)), list(page.deletions)) == (2, [PDQ_B])
    assert json.loads(page.checkpoint) == {"start": 2000, "next": ""}


def test_of_two_records_of_a_hash_in_one_page_the_later_wins(stopncii_url: str) -> None:
    _StandIn.answers = {"start=10": [(200, _page(
        [_record(PDQ_A, status="Withdrawn"), _record(PDQ_A), _record(PDQ_B),
         _record(PDQ_B, status="Deleted")], token=None, next_set=20))]}
    exchange = StopNCIIExchange({"base_url": stopncii_url}, Credentials("env", "STOPNCII_KEYS"))
    page = exchange.fetch(None)
    assert ([e.upstream_id for e in page.upserts], list(page.deletions)) == ([PDQ_A], [PDQ_B])


def test_feedback_is_sent_as_stopncii_feedback_on_the_hash(
    store: Store, stopncii_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bind(store, stopncii_url)
    exchange: Any = open_exchange(store.exchange_bindings("ncii")[0])
    exchange.send_feedback(PDQ_A, "false_positive", "case 77: a holiday photo")
    exchange.send_feedback(PDQ_C, "confirmed", "")
    sent = [(r[0], r[1], r[2], json.loads(r[3])) for r in _StandIn.requests]
    keys = {"Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY, "x-functions-key": FEEDBACK_KEY}
    assert sent == [
        ("POST", "/v1/SubmitFeedback", keys, {"count": 1, "hashFeedbacks": [
            {"tags": [], "feedbackValue": "NotBlocked", "hashValue": PDQ_A}]}),
        ("POST", "/v1/SubmitFeedback", keys, {"count": 1, "hashFeedbacks": [
            {"tags": [], "feedbackValue": "Blocked", "hashValue": PDQ_C}]})]
    assert "case 77" not in str(sent)  # the analyst's reason stays here

    _StandIn.feedback_answer = (200, b"")  # accepted without a JSON body: sent all the same
    exchange.send_feedback(PDQ_C, "confirmed", "")
    _StandIn.feedback_answer = (503, b"")  # not retried by the client: the outbox tries again
    with pytest.raises(HashsvcError, match=rf"feedback on {PDQ_A}: not sent \(HTTPError: 503"):
        exchange.send_feedback(PDQ_A, "confirmed", "")
    with pytest.raises(HashsvcError, match="is not the upstream id of a StopNCII entry"):
        exchange.send_feedback("md5:" + "0" * 32, "confirmed", "")
    with pytest.raises(HashsvcError, match="verdict 'maybe'"):
        exchange.send_feedback(PDQ_A, "maybe", "")

    monkeypatch.setenv("STOPNCII_KEYS", f"{FETCH_KEY},{SUBSCRIPTION_KEY}")
    without_key: Any = open_exchange(store.exchange_bindings("ncii")[0])
    with pytest.raises(HashsvcError, match="credentials hold no SubmitFeedback function key"):
        without_key.send_feedback(PDQ_A, "confirmed", "")
    assert len(_StandIn.requests) == 4


def test_a_binding_takes_only_what_stopncii_uses() -> None:
    credentials = Credentials("env", "STOPNCII_KEYS")
    with pytest.raises(HashsvcError, match="does not take environment"):
        StopNCIIExchange({"environment": "NGO"}, credentials)
    with pytest.raises(HashsvcError, match="plain http only on loopback"):
        StopNCIIExchange({"base_url": "http://stopncii.example/v1"}, credentials)
    with pytest.raises(HashsvcError, match="needs credentials"):
        StopNCIIExchange({}, None)
