"""ListRecentMatches through the real server, client and HTTP API: matches of real scans read
back from the audit trail, newest first, with the entry's state and verdicts, only of the
banks a key may see; and the trail's reader (hashsvc/audit_tail.py) on its own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import Client, InvalidArgument, NotFound, PermissionDenied
from hashsvc_client.v1 import admin_pb2, types_pb2

from hashsvc.audit_tail import Tail
from hashsvc.keys import add_key
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, open_store
from tests.conftest import PHOTOS
from tests.http_client import http
from tests.server_process import ServerProcess

PHOTO_A, PHOTO_B, PHOTO_C, UNLISTED = (p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))[:4])


def _sha256(image: bytes) -> bytes:
    return hashlib.sha256(image).digest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("recent-matches")
    with open_store(home / "store.sqlite") as store:
        store.create_bank("ncmec")
        store.create_bank("gifct")
        store.add_entries("ncmec", [NewEntry("sha256", _sha256(PHOTO_A), "n-a"),
                                    NewEntry("sha256", _sha256(PHOTO_C), "n-c")])
        store.add_entries("gifct", [NewEntry("sha256", _sha256(PHOTO_B), "g-b")])
        publish(store, home / "snapshots")
    scoped = add_key(home / "keys.toml", "gifct-admin", ["admin"], ["gifct"])
    # every scan audited: the ones without a match must not come back as matches
    with ServerProcess(home, "--audit-all-scans") as process:
        process.keys["gifct-admin"] = scoped
        yield process


def _client(server: ServerProcess, key: str = "admin") -> Client:
    return Client(server.target, api_key=server.keys[key])


def test_real_scans_come_back_newest_first_with_hashes_and_how_they_matched(
    server: ServerProcess,
) -> None:
    with _client(server, "scanner") as scanner:
        first = scanner.scan_image(PHOTO_A, request_id="upload-1")
        assert not scanner.scan_image(UNLISTED, request_id="no-match").matched
        second = scanner.scan_image(PHOTO_B, request_id="upload-2")
        assert not scanner.scan_image(UNLISTED, request_id="no-match-2").matched
    assert first.matched and second.matched
    with _client(server) as admin:
        answer = admin.list_recent_matches(limit=2)
    assert not answer.scan_bounded
    assert [m.request_id for m in answer.matches] == ["upload-2", "upload-1"]
    older = answer.matches[1]  # upload-1, the ncmec match
    assert (older.match.bank, older.match.external_id) == ("ncmec", "n-a")
    assert older.match.entry_id == first.matches[0].entry_id
    assert older.match.algorithm == types_pb2.ALGORITHM_SHA256
    assert older.match.status == types_pb2.MATCH_STATUS_MATCHED
    assert (older.match.distance, older.match.threshold) == (0, 0)
    assert older.match.query_transform == types_pb2.TRANSFORM_IDENTITY
    assert (older.method, older.caller) == ("ScanImage", "scanner")
    assert older.snapshot_version == first.snapshot_version
    computed = {h.algorithm: h.hex for h in first.hashes}
    assert {h.algorithm: h.hex for h in older.hashes} == computed  # the upload's, no image
    assert older.time > 0 and not older.entry_disabled and not older.feedback


def test_a_verdict_shows_on_the_match_and_a_bank_filter_and_scope_hold(
    server: ServerProcess,
) -> None:
    with _client(server, "scanner") as scanner:
        scan = scanner.scan_image(PHOTO_C, request_id="upload-3")
    (match,) = scan.matches
    with _client(server) as admin:
        admin.report_match_feedback("false_positive", entry_id=match.entry_id,
                                    reason="a coat, not the listed image", case_id="T-5")
        latest = admin.list_recent_matches(limit=1).matches[0]
        assert latest.request_id == "upload-3" and latest.entry_disabled
        assert latest.entry_disabled_reason.startswith("false positive (case T-5)")
        assert [(f.verdict, f.given_by) for f in latest.feedback] == [
            (admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE, "admin")]
        assert {m.match.bank for m in admin.list_recent_matches(bank="gifct").matches} == {
            "gifct"}
    with _client(server, "gifct-admin") as scoped:  # ncmec is not its bank: as if absent
        seen = scoped.list_recent_matches(limit=500).matches
        assert seen and {m.match.bank for m in seen} == {"gifct"}
        with pytest.raises(NotFound, match="no bank named 'ncmec'"):
            scoped.list_recent_matches(bank="ncmec")


def test_bad_requests_get_a_precise_status(server: ServerProcess) -> None:
    with _client(server) as admin:
        with pytest.raises(InvalidArgument, match="limit must be between 0 and 500"):
            admin.list_recent_matches(limit=501)
        with pytest.raises(InvalidArgument, match="limit must be between 0 and 500"):
            admin.list_recent_matches(limit=-1)
        with pytest.raises(NotFound, match="no bank named 'nope'"):
            admin.list_recent_matches(bank="nope")
        with pytest.raises(InvalidArgument, match="invalid bank name"):
            admin.list_recent_matches(bank="a b")
    with _client(server, "scanner") as scanner, pytest.raises(PermissionDenied):
        scanner.list_recent_matches()


def test_the_http_route_answers_as_grpc(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    answer = http(base, "GET", "/v1/matches/recent?limit=1&bank=gifct",
                  key=server.keys["admin"])
    assert answer.status == 200, answer.body
    [item] = answer.json()["matches"]
    assert item["match"]["bank"] == "gifct" and item["requestId"] == "upload-2"
    refused = http(base, "GET", "/v1/matches/recent?limit=9999", key=server.keys["admin"])
    assert refused.status == 422 and refused.json()["type"].endswith("/INVALID_ARGUMENT")
    unknown = http(base, "GET", "/v1/matches/recent?color=red", key=server.keys["admin"])
    assert unknown.status == 400


# ---- the trail's reader, on its own --------------------------------------------------------

def _write_trail(path: Path, count: int) -> None:
    lines = [json.dumps({"event": "scan", "request_id": f"r-{n}", "pad": "x" * (n % 50)})
             for n in range(count)]
    lines.insert(count // 2, "{torn line")
    lines.insert(count // 3, json.dumps({"event": "exchange_sync", "bank": "b"}))
    path.write_text("\n".join(lines) + "\n")


def test_the_tail_reads_back_across_blocks_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hashsvc.audit_tail.BLOCK_BYTES", 97)  # lines straddle every block
    trail = tmp_path / "audit.jsonl"
    _write_trail(trail, 300)
    every = Tail(trail, b'"event": "scan"')
    assert [r["request_id"] for r in every] == [f"r-{n}" for n in reversed(range(300))]
    assert not every.bounded
    bounded = Tail(trail, b'"event": "scan"', max_bytes=2000)
    got = [r["request_id"] for r in bounded]
    assert bounded.bounded and got == [f"r-{n}" for n in reversed(range(300 - len(got), 300))]
    assert list(Tail(tmp_path / "absent.jsonl", b"scan")) == []
