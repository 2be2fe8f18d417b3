"""The ncmec exchange against a local stand-in for NCMEC's hash-sharing API on 127.0.0.1,
serving entries and deletions in NCMEC's documented XML across pages (v2 `/entries`, `<paging>
<next>`), with the errors a real server gives: 401, 429 with Retry-After, a truncated page."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from typing import ClassVar

import pytest

from hashsvc.errors import HashsvcError
from hashsvc.store import EntryQuery, Store
from hashsvc.store.exchange_model import Credentials
from indexer.exchanges.sync import sync_bank
from tests.stand_in import StandInHandler, serving

MD5_1, PDQ_1, MD5_2 = "11" * 16, "ab" * 32, "22" * 16


def _image(entry_id: str, classification: str, **fingerprints: str) -> str:
    prints = "".join(f"<{kind}>{value}</{kind}>" for kind, value in fingerprints.items())
    return (f"<image><id>{entry_id}</id><classification>{classification}</classification>"
            f'<member id="42">Example ESP</member><fingerprints>{prints}</fingerprints></image>')


def _page(entries: str, following: str = "") -> bytes:
    paging = f"<paging><next>{following}</next></paging>" if following else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><queryResult xmlns='
            f'"https://hashsharing.ncmec.org/hashsharing/v2"><images count="2" '
            f'maxTimestamp="2026-12-01T00:00:00Z">{entries}</images>{paging}'
            f"</queryResult>").encode()


FIRST = _page(_image("e1", "A1", md5=MD5_1, pdq=PDQ_1) + _image("e2", "A2", md5=MD5_2),
              "/v2/entries?from=X&amp;to=Y&amp;start=2&amp;size=2&amp;max=3")
SECOND = _page('<deletedImage><id>e2</id><member id="42">Example ESP</member></deletedImage>'
               + _image("e1", "B1", md5=MD5_1))


class _StandIn(StandInHandler):
    content_type = "application/xml"
    """Answers by `start` (the page) from a queue per page: (status, body); the last answer
    of a queue repeats. Records every request's path."""

    answers: ClassVar[dict[str, list[tuple[int, bytes]]]] = {}
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # the name http.server calls
        _StandIn.paths.append(self.path)
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(
                b"esp-user:esp-pass").decode():
            self._answer(401, b"<error>unauthorized</error>")
            return
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        queue = _StandIn.answers[query.get("start", ["0"])[0]]
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        self._answer(status, body)



@pytest.fixture
def ncmec_url() -> Iterator[str]:
    _StandIn.paths = []
    with serving(_StandIn) as url:
        yield f"{url}/hashsharing"


def _entries(store: Store) -> dict[str, tuple[str, list[str]]]:
    """{upstream id: (hash hex, upstream tags)} of the bank's entries."""
    found = {}
    for entry in store.list_entries(EntryQuery(banks=("ncmec",))).entries:
        meta = entry.metadata or {}
        found[meta["upstream_id"]] = (entry.hash.hex(), meta.get("upstream_tags", []))
    return found


def test_pages_resume_after_a_truncated_page_and_apply_deletions(
    any_store: Store, ncmec_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NCMEC_CREDENTIALS", "esp-user:esp-pass")
    # page 2: first rate-limited (the client waits as Retry-After says and asks again), then a
    # server error (asked again too), then cut off mid-document, then whole
    _StandIn.answers = {"0": [(200, FIRST)],
                        "2": [(429, b""), (503, b""), (200, SECOND[: len(SECOND) // 2]),
                              (200, SECOND)]}
    any_store.create_bank("ncmec")
    any_store.bind_exchange("ncmec", "ncmec", {"base_url": ncmec_url},
                            Credentials("env", "NCMEC_CREDENTIALS"))

    with pytest.raises(HashsvcError, match=r"fetch failed \(ParseError.*next sync resumes"):
        sync_bank(any_store, "ncmec")
    assert len(_StandIn.paths) == 4  # page 1; page 2 rate-limited, failing, truncated
    assert _entries(any_store) == {"42-e1:MD5": (MD5_1, ["A1"]), "42-e1:PDQ": (PDQ_1, ["A1"]),
                                   "42-e2:MD5": (MD5_2, ["A2"])}
    checkpoint = json.loads(any_store.exchange_bindings("ncmec")[0].checkpoint or "{}")
    assert checkpoint["next"].endswith("start=2&size=2&max=3")

    resumed = sync_bank(any_store, "ncmec")
    # the resumed page is the one NCMEC named, from and to included (#1744 in the client)
    assert _StandIn.paths[-1] == "/hashsharing" + checkpoint["next"]
    assert (resumed.pages, resumed.totals.deleted, resumed.totals.updated) == (1, 2, 1)
    assert _entries(any_store) == {"42-e1:MD5": (MD5_1, ["B1"])}  # its PDQ is gone with e2
    window = json.loads(any_store.exchange_bindings("ncmec")[0].checkpoint or "{}")
    assert window["next"] == "" and window["from"] == checkpoint["from"]


def test_refused_credentials_apply_nothing(
    store: Store, ncmec_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NCMEC_CREDENTIALS", "esp-user:wrong")
    _StandIn.answers = {"0": [(200, FIRST)]}
    store.create_bank("ncmec")
    store.bind_exchange("ncmec", "ncmec", {"base_url": ncmec_url},
                        Credentials("env", "NCMEC_CREDENTIALS"))
    with pytest.raises(HashsvcError, match=r"fetch failed.*401") as raised:
        sync_bank(store, "ncmec")
    assert "wrong" not in str(raised.value)
    assert store.exchange_bindings("ncmec")[0].checkpoint is None
    monkeypatch.setenv("NCMEC_CREDENTIALS", "no-colon")
    with pytest.raises(HashsvcError, match="must be USER:PASSWORD"):
        sync_bank(store, "ncmec")
