"""The admin resources over HTTP against the real server: banks, entries (the client streams as
JSON arrays, one transaction each), feedback, release, publish and index status; each answer is
what the gRPC call gives, and each refusal the precise status."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hashsvc_client import Client

from tests.http_client import HttpAnswer, http
from tests.server_process import ServerProcess
from tests.test_http_api import BRIDGE, BRIDGE_HEX, _problem
from tests.test_server import _seed_bridge_bank

HEXES = [f"{n:02x}" * 32 for n in range(1, 5)]  # PDQ hashes far apart


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("http-admin")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


def _admin(server: ServerProcess, method: str, path: str, body: object = None) -> HttpAnswer:
    assert server.http_port is not None
    return http(f"http://127.0.0.1:{server.http_port}", method, path, key=server.keys["admin"],
                json_body=body)


def _entries(hexes: list[str]) -> list[dict[str, object]]:
    return [{"hash": {"algorithm": "ALGORITHM_PDQ", "hex": value}, "externalId": f"x-{value[:2]}",
             "metadata": {"case": 1}} for value in hexes]


def test_a_bank_is_created_listed_updated_and_deleted(server: ServerProcess) -> None:
    created = _admin(server, "POST", "/v1/banks", {"bank": {"name": "life", "tags": ["a"]}})
    assert created.status == 200, created.body
    assert created.json()["bank"]["name"] == "life"
    _problem(_admin(server, "POST", "/v1/banks", {"bank": {"name": "life"}}), 409,
             "ALREADY_EXISTS")
    # No updateMask: the fields given in `bank` are the mask, so the tags stay.
    patched = _admin(server, "PATCH", "/v1/banks/life", {"bank": {"thresholds": {"pdq": 20}}})
    assert patched.status == 200, patched.body
    assert patched.json()["bank"]["thresholds"] == {"pdq": 20}
    assert patched.json()["bank"]["tags"] == ["a"]
    # An explicit updateMask applies exactly those fields: `tags` cleared, description ignored.
    masked = _admin(server, "PATCH", "/v1/banks/life",
                    {"bank": {"description": "ignored"}, "updateMask": "tags"})
    assert masked.json()["bank"]["tags"] == [] and masked.json()["bank"]["description"] == ""
    with Client(server.target, api_key=server.keys["admin"]) as client:
        banks = {bank.name: bank for bank in client.list_banks()}
    assert banks["life"].thresholds["pdq"] == 20
    listed = _admin(server, "GET", "/v1/banks").json()["banks"]
    assert {bank["name"] for bank in listed} == set(banks)
    assert "name" in _problem(_admin(server, "PATCH", "/v1/banks/life",
                                     {"name": "other", "bank": {}}), 400, "INVALID_ARGUMENT")
    _problem(_admin(server, "PATCH", "/v1/banks/nope", {"bank": {"tags": ["b"]}}), 404,
             "NOT_FOUND")
    assert _admin(server, "DELETE", "/v1/banks/life").status == 200
    _problem(_admin(server, "DELETE", "/v1/banks/life"), 404, "NOT_FOUND")


def test_entries_are_added_as_one_transaction_or_not_at_all(server: ServerProcess) -> None:
    assert _admin(server, "POST", "/v1/banks", {"bank": {"name": "adds"}}).status == 200
    bad = [*_entries(HEXES[:2]), {"hash": {"algorithm": "ALGORITHM_PDQ", "hex": "zz"}}]
    detail = _problem(_admin(server, "POST", "/v1/banks/adds/entries",
                             [{"entries": bad[:2]}, {"entries": bad[2:]}]), 422,
                      "INVALID_ARGUMENT")
    assert "2" in detail  # names the entry by its position
    assert _admin(server, "GET", "/v1/entries?banks=adds").json()["entries"] == []
    # The stream's items as an array, or one object for a one-item stream.
    added = _admin(server, "POST", "/v1/banks/adds/entries",
                   [{"entries": _entries(HEXES[:2])}, {"entries": _entries(HEXES[2:3])}])
    assert added.status == 200, added.body
    assert added.json() == {"added": "3", "duplicates": "0"}
    again = _admin(server, "POST", "/v1/banks/adds/entries", {"entries": _entries(HEXES[2:])})
    assert again.json() == {"added": "1", "duplicates": "1"}
    assert "bank" in _problem(_admin(server, "POST", "/v1/banks/adds/entries",
                                     {"bank": "bridge", "entries": []}), 400,
                              "INVALID_ARGUMENT")


def test_entries_are_found_by_query_parameters_and_changed_by_selector(
        server: ServerProcess) -> None:
    assert _admin(server, "POST", "/v1/banks", {"bank": {"name": "finds"}}).status == 200
    assert _admin(server, "POST", "/v1/banks/finds/entries",
                  {"entries": _entries(HEXES)}).status == 200
    page = _admin(server, "GET", "/v1/entries?banks=finds&pageSize=3").json()
    assert len(page["entries"]) == 3 and page["nextPageToken"]
    found = _admin(server, "GET", f"/v1/entries?banks=finds&hash.algorithm=ALGORITHM_PDQ"
                   f"&hash.hex={HEXES[1]}").json()["entries"]
    assert [entry["externalId"] for entry in found] == ["x-02"]
    entry_id = found[0]["id"]
    one = _admin(server, "GET", f"/v1/entries/{entry_id}")
    assert one.json()["entry"]["metadata"] == {"case": 1}
    changed = _admin(server, "POST", "/v1/entries:setDisabled",
                     {"bank": "finds", "selector": {"externalIds": ["x-01", "x-02"]},
                      "disabled": True, "reason": "review"})
    assert changed.json() == {"changed": "2"}
    disabled = _admin(server, "GET", "/v1/entries?banks=finds&disabled=true").json()["entries"]
    assert {entry["disabledReason"] for entry in disabled} == {"review"}
    removed = _admin(server, "POST", "/v1/entries:remove",
                     {"bank": "finds", "selector": {"ids": [entry_id]}})
    assert removed.json() == {"removed": "1"}
    _problem(_admin(server, "GET", f"/v1/entries/{entry_id}"), 404, "NOT_FOUND")
    assert "'entry_id'" in _problem(_admin(server, "GET", "/v1/entries/abc"), 400,
                                    "INVALID_ARGUMENT")
    _problem(_admin(server, "GET", "/v1/entries?banks=nope"), 404, "NOT_FOUND")


def test_a_false_positive_verdict_disables_the_entry_and_the_scan_changes(
        server: ServerProcess) -> None:
    assert server.http_port is not None
    base = f"http://127.0.0.1:{server.http_port}"
    scan = http(base, "POST", "/v1/scan/image", key=server.keys["scanner"], body=BRIDGE,
                content_type="image/jpeg").json()["result"]
    entry_id = scan["matches"][0]["entryId"]
    _problem(_admin(server, "POST", f"/v1/entries/{entry_id}/feedback",
                    {"verdict": "FEEDBACK_VERDICT_FALSE_POSITIVE"}), 422, "INVALID_ARGUMENT")
    verdict = _admin(server, "POST", f"/v1/entries/{entry_id}/feedback",
                     {"verdict": "FEEDBACK_VERDICT_FALSE_POSITIVE", "reason": "a bridge",
                      "caseId": "c-1", "scannedHash": {"algorithm": "ALGORITHM_PDQ",
                                                       "hex": BRIDGE_HEX}})
    assert verdict.status == 200, verdict.body
    assert verdict.json()["disabledNow"] is True
    after = http(base, "POST", "/v1/scan/image", key=server.keys["scanner"], body=BRIDGE,
                 content_type="image/jpeg").json()["result"]
    assert after["matched"] is False
    feedback = _admin(server, "GET", f"/v1/entries/{entry_id}").json()["entry"]["feedback"]
    assert [item["caseId"] for item in feedback] == ["c-1"]
    _problem(_admin(server, "POST", "/v1/entries/999999/feedback",
                    {"verdict": "FEEDBACK_VERDICT_CONFIRMED"}), 404, "NOT_FOUND")
    released = _admin(server, "POST", f"/v1/entries/{entry_id}:release", {"reason": "checked"})
    assert released.status == 200 and released.json()["entryId"] == entry_id
    _problem(_admin(server, "POST", "/v1/entries/999999:release", {}), 404, "NOT_FOUND")


def test_publish_and_index_status(server: ServerProcess) -> None:
    assert _admin(server, "POST", "/v1/banks", {"bank": {"name": "pub"}}).status == 200
    assert _admin(server, "GET", "/v1/index/status").json()["upToDate"] is False
    published = _admin(server, "POST", "/v1/snapshots:publish")  # an empty body: defaults
    assert published.status == 200, published.body
    assert published.json()["published"] is True
    status = _admin(server, "GET", "/v1/index/status").json()
    assert status["upToDate"] is True and status["version"] == published.json()["version"]
