"""Match feedback: an analyst's verdict through the real server and client (ReportMatchFeedback,
on SQLite and PostgreSQL), the store's record of it, and `indexer entries feedback|show`."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import (
    Client,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from hashsvc_client.v1 import admin_pb2
from prometheus_client.parser import text_string_to_metric_families

from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.home import DataHome
from hashsvc.keys import add_key
from hashsvc.snapshot import publish
from hashsvc.store import Entry, EntryQuery, EntrySelector, NewEntry, Store, open_store
from hashsvc.store.feedback_model import NewFeedback
from tests.conftest import run_indexer
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess

BRIDGE, COASTER, HARBOUR = (random.Random(n).randbytes(32) for n in (11, 12, 13))
FP = admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE


def _fp(reason: str, case: str = "T-1", by: str = "analyst") -> NewFeedback:
    return NewFeedback(verdict="false_positive", reason=reason, case_id=case, given_by=by)


# ---- the store, both backends ----------------------------------------------------------------

def test_a_false_positive_disables_once_and_keeps_the_first_reason(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.add_entries("b", [NewEntry("pdq", BRIDGE, "x-1")])
    (entry,) = _entries(any_store, "b")
    before = any_store.revision()

    first = any_store.record_feedback(entry.id, _fp("blank frame", "T-1", "alice"))
    assert first.disabled_now and first.disabled_reason == "false positive (case T-1): blank frame"
    assert any_store.revision() == before + 1  # a disable: servers drop it through the delta
    second = any_store.record_feedback(entry.id, _fp("logo", "T-2", "bob"))
    assert not second.disabled_now and second.disabled_reason == first.disabled_reason
    assert any_store.get_entry(entry.id).disabled_reason == first.disabled_reason  # kept
    confirmed = any_store.record_feedback(entry.id, NewFeedback(
        verdict="confirmed", reason="", case_id="T-3", given_by="carol",
        scanned_hash="pdq:" + BRIDGE.hex(), upload_id="u-9"))
    revision = any_store.revision()
    assert confirmed.queued == 0 and confirmed.disabled_reason == first.disabled_reason

    verdicts = any_store.entries_feedback([entry.id])
    assert [(f.verdict, f.reason, f.case_id, f.given_by, f.upstream) for f in verdicts] == [
        ("false_positive", "blank frame", "T-1", "alice", ""),
        ("false_positive", "logo", "T-2", "bob", ""),
        ("confirmed", "", "T-3", "carol", "")]
    assert (verdicts[2].scanned_hash, verdicts[2].upload_id) == ("pdq:" + BRIDGE.hex(), "u-9")
    any_store.record_feedback(entry.id, NewFeedback("confirmed", "", "T-4", "dan"))
    assert any_store.revision() == revision  # a confirmation changes no entry


def test_a_second_disable_keeps_the_first_reason(any_store: Store) -> None:
    """Whichever way an entry is disabled again (SetEntriesDisabled, `indexer disable`, a false
    positive), the first reason stays; enabling clears it, so the next disable sets its own."""
    any_store.create_bank("b")
    any_store.add_entries("b", [NewEntry("pdq", BRIDGE, "x-1")])
    (entry,) = _entries(any_store, "b")
    by_id = EntrySelector(ids=[entry.id])
    assert any_store.set_disabled("b", by_id, True, "first") == 1
    assert any_store.set_disabled("b", by_id, True, "second") == 1
    assert any_store.get_entry(entry.id).disabled_reason == "first"
    assert not any_store.record_feedback(entry.id, _fp("third")).disabled_now
    assert any_store.get_entry(entry.id).disabled_reason == "first"
    any_store.set_disabled("b", by_id, False)
    any_store.set_disabled("b", by_id, True, "fourth")
    assert any_store.get_entry(entry.id).disabled_reason == "fourth"


def test_bad_feedback_records_nothing(any_store: Store) -> None:
    any_store.create_bank("b")
    any_store.add_entries("b", [NewEntry("pdq", BRIDGE, "x-1")])
    (entry,) = _entries(any_store, "b")
    with pytest.raises(NotFoundError, match="no entry with id 999999"):
        any_store.record_feedback(999_999, _fp("blank"))
    with pytest.raises(HashsvcError, match="a false positive needs a reason"):
        any_store.record_feedback(entry.id, _fp("  "))
    with pytest.raises(HashsvcError, match="verdict must be confirmed or false_positive"):
        any_store.record_feedback(entry.id, NewFeedback("maybe", "", "", "x"))
    assert any_store.entries_feedback([entry.id]) == []
    assert not any_store.get_entry(entry.id).disabled


def _entries(store: Store, bank: str) -> list[Entry]:
    return store.list_entries(EntryQuery(banks=[bank])).entries


# ---- through the server and client, both backends --------------------------------------------

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp(f"feedback-{request.param}")
    flags: tuple[str, ...] = ()
    target = str(home / "store.sqlite")
    if request.param == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres")
        target = postgres.new_database()
        flags = ("--store", target)
    with open_store(target) as store:
        store.create_bank("ncmec")
        store.create_bank("gifct")
        store.add_entries("ncmec", [NewEntry("pdq", BRIDGE, "n-bridge"),
                                    NewEntry("pdq", COASTER, "n-coaster")])
        store.add_entries("gifct", [NewEntry("pdq", HARBOUR, "g-harbour")])
        publish(store, home / "snapshots")
    scoped = add_key(home / "keys.toml", "ncmec-admin", ["admin"], ["ncmec"])
    with ServerProcess(home, *flags) as process:
        process.keys["ncmec-admin"] = scoped
        yield process


def _client(server: ServerProcess, key: str = "admin") -> Client:
    return Client(server.target, api_key=server.keys[key])


def _entry_id(client: Client, bank: str, value: bytes) -> int:
    (entry,) = client.list_entries(banks=[bank], hash=("pdq", value.hex())).entries
    return int(entry.id)


def _feedback_count(server: ServerProcess, bank: str, verdict: str) -> float:
    for family in text_string_to_metric_families(server.scrape()):
        for sample in family.samples:
            if (sample.name == "hashsvc_match_feedback_total"
                    and sample.labels == {"bank": bank, "verdict": verdict}):
                return float(sample.value)
    return 0.0


def test_a_false_positive_stops_matching_and_is_recorded_everywhere(
    server: ServerProcess,
) -> None:
    with _client(server) as admin, _client(server, "scanner") as scanner:
        entry_id = _entry_id(admin, "ncmec", BRIDGE)
        assert [m.entry_id for m in scanner.scan_hashes([("pdq", BRIDGE.hex())]).matches] == [
            entry_id]
        counted = _feedback_count(server, "ncmec", "false_positive")
        reply = admin.report_match_feedback(
            "false_positive", entry_id=entry_id, reason="a bridge, not the listed image",
            case_id="T-881", scanned_hash=("pdq", BRIDGE.hex()), upload_id="upload-5")
        assert (reply.entry_id, reply.disabled, reply.disabled_now, reply.queued_upstream) == (
            entry_id, True, True, 0)
        assert reply.disabled_reason == (
            "false positive (case T-881): a bridge, not the listed image")
        # out of the serving worker's scans before the call returned
        assert not scanner.scan_hashes([("pdq", BRIDGE.hex())]).matched

        again = admin.report_match_feedback("false_positive", bank="ncmec",
                                            hash=("pdq", BRIDGE.hex()), reason="duplicate",
                                            case_id="T-900")
        assert not again.disabled_now and again.disabled_reason == reply.disabled_reason

        entry = admin.get_entry(entry_id)
        assert entry.disabled_reason == reply.disabled_reason  # the first reason, kept
        assert [(f.verdict, f.case_id, f.given_by) for f in entry.feedback] == [
            (FP, "T-881", "admin"), (FP, "T-900", "admin")]
        assert entry.feedback[0].scanned_hash.hex == BRIDGE.hex()
        assert entry.feedback[0].upload_id == "upload-5"
        listed = admin.list_entries(banks=["ncmec"], disabled=True).entries
        assert [len(e.feedback) for e in listed] == [2]
    assert _feedback_count(server, "ncmec", "false_positive") == counted + 2
    audit = [json.loads(line) for line in
             (server.home / "audit.jsonl").read_text().splitlines()]
    verdicts = [r for r in audit if r["event"] == "match_feedback"
                and r["entry_id"] == entry_id]
    assert [(r["caller"], r["case_id"], r["disabled_now"]) for r in verdicts] == [
        ("admin", "T-881", True), ("admin", "T-900", False)]
    assert server.keys["admin"] not in (server.home / "audit.jsonl").read_text()


def test_a_confirmation_by_bank_and_hash_keeps_the_entry_matching(
    server: ServerProcess,
) -> None:
    with _client(server, "ncmec-admin") as admin, _client(server, "scanner") as scanner:
        reply = admin.report_match_feedback("confirmed", bank="ncmec",
                                            hash=("pdq", COASTER.hex()), case_id="T-2")
        assert not reply.disabled and reply.feedback_id > 0
        assert scanner.scan_hashes([("pdq", COASTER.hex())]).matched
        (verdict,) = admin.get_entry(reply.entry_id).feedback
        assert (verdict.verdict, verdict.given_by) == (
            admin_pb2.FEEDBACK_VERDICT_CONFIRMED, "ncmec-admin")


def test_bad_feedback_gets_a_precise_status_and_changes_nothing(server: ServerProcess) -> None:
    with _client(server) as admin:
        coaster = _entry_id(admin, "ncmec", COASTER)
        harbour = _entry_id(admin, "gifct", HARBOUR)
        with pytest.raises(NotFound, match="no entry with id 987654"):
            admin.report_match_feedback("confirmed", entry_id=987_654)
        with pytest.raises(NotFound, match="no entry with pdq hash"):
            admin.report_match_feedback("confirmed", bank="ncmec", hash=("pdq", "00" * 32))
        with pytest.raises(InvalidArgument, match="a false positive needs a reason"):
            admin.report_match_feedback("false_positive", entry_id=coaster)
        with pytest.raises(InvalidArgument, match="verdict: unspecified"):
            admin.report_match_feedback("unspecified", entry_id=coaster)
        with pytest.raises(InvalidArgument, match="name the entry"):
            admin.report_match_feedback("confirmed", bank="ncmec")
        assert not admin.get_entry(coaster).disabled
    with _client(server, "ncmec-admin") as scoped:  # gifct is not its bank: as if absent
        with pytest.raises(NotFound, match=f"no entry with id {harbour}"):
            scoped.report_match_feedback("false_positive", entry_id=harbour, reason="x")
        with pytest.raises(NotFound, match="no bank named 'gifct'"):
            scoped.report_match_feedback("confirmed", bank="gifct",
                                         hash=("pdq", HARBOUR.hex()))
    with (_client(server, "scanner") as scanner,  # the admin role is needed
          pytest.raises(PermissionDenied, match="lacks the 'admin' role")):
        scanner.report_match_feedback("false_positive", entry_id=harbour, reason="x")
    with (Client(server.target, api_key="not-a-key") as stranger,
          pytest.raises(Unauthenticated)):
        stranger.report_match_feedback("false_positive", entry_id=harbour, reason="x")
    with _client(server) as admin:
        entry = admin.get_entry(harbour)
        assert not entry.disabled and not entry.feedback


# ---- the CLI ---------------------------------------------------------------------------------

def test_cli_feedback_and_show(home: DataHome, store: Store, tmp_path: Path) -> None:
    store.create_bank("b")
    store.add_entries("b", [NewEntry("md5", bytes(range(16)), "x-1")])
    (entry,) = _entries(store, "b")
    refused = run_indexer(home, "entries", "feedback", str(entry.id), "--verdict",
                          "false-positive", "--case", "T-1")
    assert refused.returncode != 0 and "a false positive needs a reason" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = run_indexer(home, "entries", "feedback", "424242", "--verdict", "confirmed")
    assert missing.returncode != 0 and "no entry with id 424242" in missing.stderr

    given = run_indexer(home, "entries", "feedback", str(entry.id), "--verdict",
                        "false-positive", "--reason", "test card", "--case", "T-7",
                        "--upload-id", "u-1", check=True)
    record = json.loads(given.stdout)
    assert (record["disabled_now"], record["disabled_reason"]) == (
        True, "false positive (case T-7): test card")
    shown = json.loads(run_indexer(home, "entries", "show", str(entry.id), check=True).stdout)
    assert shown["disabled"] and shown["disabled_reason"] == record["disabled_reason"]
    (verdict,) = shown["feedback"]
    assert (verdict["verdict"], verdict["case_id"], verdict["upload_id"]) == (
        "false_positive", "T-7", "u-1")
    assert verdict["given_by"].startswith("indexer:")
    audit = [json.loads(line) for line in (home.root / "audit.jsonl").read_text().splitlines()]
    assert [(r["event"], r["entry_id"], r["case_id"]) for r in audit] == [
        ("match_feedback", entry.id, "T-7")]
