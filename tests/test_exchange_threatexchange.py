"""The fb_threatexchange exchange against a local stand-in for ThreatExchange's Graph API on
127.0.0.1: `/{privacy_group}/threat_updates` in its documented paged JSON (`data`, `paging.next`
carrying the access token and an `after` cursor), the descriptors of an indicator and the
reactions POST, with the errors a real server gives: 401 with a Graph error, 429 with
Retry-After, 5xx, a truncated page."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.store import EntryQuery, Store
from hashsvc.store.exchange_model import Credentials
from indexer.exchanges import open_exchange
from indexer.exchanges.sync import sync_bank
from tests.conftest import run_indexer
from tests.stand_in import StandInHandler, serving

APP_ID = "123456789"
TOKEN = f"{APP_ID}|s3cretTokenNeverShown_0123"
GROUP = "1012185296055235"
PDQ_1, MD5_2, SHA_5 = "ab" * 32, "22" * 16, "cd" * 32


def _descriptor(descriptor_id: str, owner: str, tags: list[str], status: str = "MALICIOUS",
                reactions: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"id": descriptor_id, "owner": {"id": owner}, "tags": tags, "status": status,
            "reactions": reactions or []}


def _update(indicator_id: str, kind: str, value: str, *descriptors: dict[str, Any],
            delete: bool = False) -> dict[str, Any]:
    update: dict[str, Any] = {"id": indicator_id, "indicator": value, "type": kind,
                              "last_updated": 1_764_547_200, "should_delete": delete}
    if not delete:
        update["descriptors"] = {"data": list(descriptors)}
    return update


FIRST = [
    _update("1001", "HASH_PDQ", PDQ_1, _descriptor("2001", "777", ["gifct_tve", "terrorism"])),
    _update("1002", "HASH_MD5", MD5_2, _descriptor("2002", "777", [])),
    _update("1003", "HASH_TMK", "00" * 256, _descriptor("2003", "777", [])),  # not ours
    _update("1004", "HASH_MD5", "44" * 16, _descriptor("2004", "777", ["media_type_video"])),
]
SECOND = [
    _update("1002", "HASH_MD5", MD5_2, delete=True),
    _update("1001", "HASH_PDQ", PDQ_1, _descriptor(
        "2001", "777", ["gifct_tve", "terrorism"],
        reactions=[{"key": "DISAGREE_WITH_TAGS", "value": APP_ID}])),
    _update("1005", "HASH_SHA256", SHA_5, _descriptor("2005", "888", ["Hate Speech!"])),
]


class _StandIn(StandInHandler):
    """threat_updates answers by `after` cursor from a queue per page: (status, body or a
    page's updates and next cursor); the last answer of a queue repeats. Records every
    request's path and every reaction."""

    pages: ClassVar[dict[str, list[tuple[int, Any]]]] = {}
    paths: ClassVar[list[str]] = []
    reactions: ClassVar[list[tuple[str, str]]] = []
    reaction_answer: ClassVar[dict[str, Any]] = {"success": True}
    base: ClassVar[str] = ""  # the stand-in's own base URL, for next-page links

    def do_GET(self) -> None:  # the name http.server calls
        url, query = self._checked()
        if url is None:
            return
        if url.path == f"/v26.0/{GROUP}/threat_updates/":
            queue = _StandIn.pages[query.get("after", "")]
            status, answer = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(answer, tuple):
                updates, following = answer
                answer = {"data": updates, "paging": {}}
                if following:
                    answer["paging"] = {"cursors": {"after": following}, "next": (
                        f"{_StandIn.base}/{GROUP}/threat_updates/?access_token="
                        f"{urllib.parse.quote(TOKEN)}&limit=2&after={following}")}
            self._answer(status, answer)
        elif url.path in ("/v26.0/1001", "/v26.0/1999"):  # an indicator's descriptors
            seen = [{"id": "2001"}, {"id": "2009"}] if url.path.endswith("1001") else []
            self._answer(200, {"id": url.path.rsplit("/", 1)[-1],
                               "descriptors": {"data": seen}})
        else:
            self._answer(404, {"error": {"message": "Unknown path", "code": 803}})

    def do_POST(self) -> None:  # the reactions API
        url, query = self._checked()
        if url is not None:
            _StandIn.reactions.append((url.path.strip("/").rsplit("/", 1)[-1],
                                       query.get("reactions", "")))
            self._answer(200, _StandIn.reaction_answer)

    def _checked(self) -> tuple[urllib.parse.SplitResult | None, dict[str, str]]:
        _StandIn.paths.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if query.get("access_token") != TOKEN:
            self._answer(401, {"error": {"message": "Invalid OAuth access token.",
                                         "type": "OAuthException", "code": 190}})
            return None, query
        return url, query

    def _answer(self, status: int, answer: Any) -> None:
        super()._answer(status, answer if isinstance(answer, bytes)
                        else json.dumps(answer).encode())


@pytest.fixture
def graph_url() -> Iterator[str]:
    _StandIn.paths, _StandIn.reactions = [], []
    _StandIn.reaction_answer = {"success": True}
    with serving(_StandIn) as url:
        _StandIn.base = f"{url}/v26.0"
        yield _StandIn.base


def _bind(store: Store, graph_url: str, monkeypatch: pytest.MonkeyPatch,
          token: str = TOKEN) -> None:
    monkeypatch.setenv("TX_TOKEN", token)
    store.create_bank("gifct")
    store.bind_exchange("gifct", "fb_threatexchange",
                        {"privacy_group": int(GROUP), "base_url": graph_url},
                        Credentials("env", "TX_TOKEN"))


def _entries(store: Store) -> dict[str, tuple[str, str, list[str]]]:
    """{upstream id: (algorithm, hash hex, upstream tags)} of the bank's entries."""
    found = {}
    for entry in store.list_entries(EntryQuery(banks=("gifct",))).entries:
        meta = entry.metadata or {}
        found[meta["upstream_id"]] = (entry.algorithm, entry.hash.hex(),
                                      meta.get("upstream_tags", []))
    return found


def _query(path: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))


def test_pages_resume_after_a_truncated_page_and_apply_deletions_and_opinions(
    any_store: Store, graph_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = json.dumps({"data": SECOND, "paging": {}}).encode()
    # page 2: first rate-limited (waited out as Retry-After says), then cut off mid-document,
    # then whole; a later window finds nothing new
    _StandIn.pages = {"": [(200, (FIRST, "CUR1")), (200, ([], ""))],
                      "CUR1": [(429, {"error": {"message": "rate", "code": 4}}),
                               (200, second[: len(second) // 2]), (200, second)]}
    _bind(any_store, graph_url, monkeypatch)

    with pytest.raises(HashsvcError, match=r"not valid JSON.*next sync resumes") as raised:
        sync_bank(any_store, "gifct")
    assert TOKEN not in str(raised.value)
    assert len(_StandIn.paths) == 3  # page 1, page 2 rate-limited, page 2 truncated
    first = _query(_StandIn.paths[0])
    assert "start_time" not in first and int(first["stop_time"]) > 0
    assert first["limit"] == "500" and "descriptors{id," in first["fields"]
    assert _entries(any_store) == {
        "1001": ("pdq", PDQ_1, ["gifct_tve", "opinion:positive_class", "terrorism"]),
        "1002": ("md5", MD5_2, ["opinion:positive_class"])}
    stored = any_store.exchange_bindings("gifct")[0].checkpoint or "{}"
    assert "access_token" not in stored and "s3cret" not in stored  # the token stays out
    checkpoint = json.loads(stored)
    assert checkpoint["next"].endswith("after=CUR1") and checkpoint["start"] == 0

    resumed = sync_bank(any_store, "gifct")
    assert _query(_StandIn.paths[-1]) == {"access_token": TOKEN, "limit": "2",
                                          "after": "CUR1"}  # the page the cursor named
    totals = resumed.totals
    assert (resumed.pages, totals.added, totals.updated, totals.deleted) == (1, 1, 1, 1)
    assert _entries(any_store) == {
        "1001": ("pdq", PDQ_1, ["gifct_tve", "my_opinion:negative_class",
                                "opinion:negative_class", "opinion:positive_class",
                                "terrorism"]),
        "1005": ("sha256", SHA_5, ["Hate-Speech-", "opinion:positive_class"])}
    window = json.loads(any_store.exchange_bindings("gifct")[0].checkpoint or "{}")
    assert window == {"start": 0, "stop": checkpoint["stop"], "next": ""}

    later = sync_bank(any_store, "gifct")  # the next window starts where that one stopped
    assert _query(_StandIn.paths[-1])["start_time"] == str(checkpoint["stop"])
    assert later.pages == 1 and later.totals.added == later.totals.deleted == 0
    assert len(_entries(any_store)) == 2


def test_rate_limits_are_waited_out_and_refusals_apply_nothing(
    store: Store, graph_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Graph API's rate limit (code 4, sent as a 403) is waited out like a 429
    _StandIn.pages = {"": [(403, {"error": {"message": "Application request limit reached",
                                            "type": "OAuthException", "code": 4}}),
                           (200, (FIRST[:1], ""))]}
    _bind(store, graph_url, monkeypatch)
    assert sync_bank(store, "gifct").totals.added == 1 and len(_StandIn.paths) == 2
    _StandIn.paths = []
    monkeypatch.setenv("TX_TOKEN", f"{APP_ID}|wrongTokenWrongToken_99")
    with pytest.raises(HashsvcError, match=r"HTTP 401 \(OAuthException 190: Invalid OAuth"
                       ) as raised:
        sync_bank(store, "gifct")
    assert "wrongToken" not in str(raised.value) and len(_StandIn.paths) == 1
    monkeypatch.setenv("TX_TOKEN", "not-an-app-token")
    with pytest.raises(HashsvcError, match=r"env TX_TOKEN\) must be an app token") as raised:
        sync_bank(store, "gifct")
    assert "not-an-app-token" not in str(raised.value)

    checkpoint = store.exchange_bindings("gifct")[0].checkpoint
    # 5xx: tried again a bounded number of times, then the sync fails
    monkeypatch.setenv("TX_TOKEN", TOKEN)
    _StandIn.paths, _StandIn.pages = [], {"": [(503, {"error": {"code": 2}})]}
    with pytest.raises(HashsvcError, match=r"HTTP 503 .*4 attempts; nothing applied"):
        sync_bank(store, "gifct")
    assert len(_StandIn.paths) == 4

    # a next page on another host would get the token: refused, page and all
    _StandIn.pages = {"": [(200, {"data": FIRST, "paging": {
        "next": f"http://localhost:1/v26.0/{GROUP}/threat_updates/?after=X"}})]}
    with pytest.raises(HashsvcError, match="refusing to send the token there"):
        sync_bank(store, "gifct")
    assert store.exchange_bindings("gifct")[0].checkpoint == checkpoint
    assert list(_entries(store)) == ["1001"]
    health = store.exchange_health("gifct")[0]
    assert health.errors == 4 and TOKEN not in (health.last_error or "")


def test_a_malformed_update_refuses_its_page(
    store: Store, graph_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = [FIRST[0], {**FIRST[1], "indicator": "not-hex"}]
    _StandIn.pages = {"": [(200, (broken, ""))]}
    _bind(store, graph_url, monkeypatch)
    with pytest.raises(HashsvcError, match=r"indicator 1002: HASH_MD5 'not-hex' is not hex"):
        sync_bank(store, "gifct")
    _StandIn.pages = {"": [(200, ([{"id": "1007", "type": "HASH_PDQ"}], ""))]}
    with pytest.raises(HashsvcError, match=r"update '1007' is malformed \(KeyError"):
        sync_bank(store, "gifct")
    assert not _entries(store) and store.exchange_bindings("gifct")[0].checkpoint is None


def test_feedback_is_a_reaction_on_every_descriptor(
    store: Store, graph_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bind(store, graph_url, monkeypatch)
    exchange: Any = open_exchange(store.exchange_bindings("gifct")[0])
    exchange.send_feedback("1001", "confirmed", "case 7: seen in an upload")
    exchange.send_feedback("1001", "false_positive", "case 8: a blank frame")
    assert _StandIn.reactions == [("2001", "SAW_THIS_TOO"), ("2009", "SAW_THIS_TOO"),
                                  ("2001", "DISAGREE_WITH_TAGS"),
                                  ("2009", "DISAGREE_WITH_TAGS")]
    assert not any("case" in path for path in _StandIn.paths)  # the reason stays here

    _StandIn.reaction_answer = {"error": {"message": "(#200) Permissions error",
                                          "type": "OAuthException", "code": 200}}
    with pytest.raises(HashsvcError, match=r"refused \(OAuthException 200: \(#200\) Perm"
                       ) as raised:
        exchange.send_feedback("1001", "confirmed", "")
    assert TOKEN not in str(raised.value)
    with pytest.raises(HashsvcError, match="1999 has no descriptor we may see"):
        exchange.send_feedback("1999", "confirmed", "")
    with pytest.raises(HashsvcError, match="unknown verdict 'maybe'"):
        exchange.send_feedback("1001", "maybe", "")
    monkeypatch.setenv("TX_TOKEN", f"{APP_ID}|wrongTokenWrongToken_99")
    refused: Any = open_exchange(store.exchange_bindings("gifct")[0])
    with pytest.raises(HashsvcError, match=r"descriptors: HTTP 401 .*; feedback not sent"
                       ) as raised:
        refused.send_feedback("1001", "false_positive", "")
    assert "wrongToken" not in str(raised.value)
    assert len(_StandIn.reactions) == 5  # the four above and the refused one, no more


def test_cli_binds_a_privacy_group_and_syncs_it(
    home: DataHome, graph_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _StandIn.pages = {"": [(200, (FIRST, ""))]}
    monkeypatch.setenv("TX_TOKEN", TOKEN)
    run_indexer(home, "bank", "create", "gifct", check=True)
    missing = run_indexer(home, "exchange", "bind", "gifct", "--type", "fb_threatexchange",
                          "--credentials-env", "TX_TOKEN")
    assert missing.returncode != 0 and "needs a privacy group" in missing.stderr
    run_indexer(home, "exchange", "bind", "gifct", "--type", "fb_threatexchange",
                "--privacy-group", GROUP, "--base-url", graph_url, "--credentials-env",
                "TX_TOKEN", check=True)
    synced = run_indexer(home, "exchange", "sync", "gifct", check=True)
    assert json.loads(synced.stdout)["added"] == 2
    status = run_indexer(home, "exchange", "status", "gifct", check=True)
    assert json.loads(status.stdout)["config"]["privacy_group"] == int(GROUP)
    for output in (synced.stdout, synced.stderr, status.stdout, status.stderr):
        assert "s3cret" not in output
    assert b"s3cret" not in home.store_path.read_bytes()
