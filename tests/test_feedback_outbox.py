"""The feedback outbox: verdicts on an exchange-backed bank's entries are sent upstream by the
bank's syncs, retried after a failure and never sent twice. The ncmec connector's
`send_feedback` against a local stand-in for NCMEC's v2 feedback API on 127.0.0.1 (upvote,
downvote with one of NCMEC's reason GUIDs), asserting on the requests it receives."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from hashsvc.home import DataHome
from hashsvc.store import EntryQuery, Store, is_postgres
from hashsvc.store.exchange_model import Credentials
from hashsvc.store.feedback_model import NewFeedback
from indexer.exchanges.sync import sync_bank
from tests.conftest import run_indexer
from tests.stand_in import StandInHandler, serving
from tests.test_exchange_ncmec import MD5_1, MD5_2, PDQ_1, _image, _page

PAGE = _page(_image("e1", "A1", md5=MD5_1, pdq=PDQ_1) + _image("e2", "A2", md5=MD5_2))
REASONS = (b'<?xml version="1.0" encoding="UTF-8"?><feedbackReasons xmlns="https://hashsharing'
           b'.ncmec.org/hashsharing/v2"><availableFeedbackReasons>'
           b'<reason guid="g-not-csam" name="Not CSAM"/>'
           b'<reason guid="g-wrong-hash" name="Hash does not match"/>'
           b"</availableFeedbackReasons></feedbackReasons>")


class _StandIn(StandInHandler):
    content_type = "application/xml"
    """NCMEC's entries (one page), feedback reasons, and feedback PUTs, answered from
    `put_status` in turn (the last repeats). Records every PUT's path and body."""

    put_status: ClassVar[list[int]] = [200]
    puts: ClassVar[list[tuple[str, bytes]]] = []

    def do_GET(self) -> None:  # the name http.server calls
        if not self._authorized():
            return
        self._answer(200, REASONS if "/feedback/" in self.path else PAGE)

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _StandIn.puts.append((self.path, body))
        queue = _StandIn.put_status
        self._answer(queue.pop(0) if len(queue) > 1 else queue[0], b"")

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == "Basic " + base64.b64encode(
                b"esp-user:esp-pass").decode():
            return True
        self._answer(401, b"<error>unauthorized</error>")
        return False



@pytest.fixture
def ncmec_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NCMEC_CREDENTIALS", "esp-user:esp-pass")
    _StandIn.puts, _StandIn.put_status = [], [200]
    with serving(_StandIn) as url:
        yield f"{url}/hashsharing"


def _entry_id(store: Store, bank: str, upstream_id: str) -> int:
    (entry,) = store.list_entries(EntryQuery(banks=[bank], upstream_id=upstream_id)).entries
    return entry.id


def _status(home: DataHome, store: Store, bank: str) -> dict[str, object]:
    """`indexer exchange status BANK`, the real CLI, on this store."""
    flags = ["--store", store.target] if is_postgres(store.target) else []
    result = run_indexer(home, *flags, "exchange", "status", bank, check=True)
    feedback: dict[str, object] = json.loads(result.stdout)["feedback"]
    return feedback


def test_verdicts_are_sent_once_and_a_failed_send_is_retried(
    any_store: Store, ncmec_url: str, home: DataHome,
) -> None:
    any_store.create_bank("ncmec")
    any_store.bind_exchange("ncmec", "ncmec", {"base_url": ncmec_url},
                            Credentials("env", "NCMEC_CREDENTIALS"))
    assert sync_bank(any_store, "ncmec").totals.added == 3
    wrong = any_store.record_feedback(_entry_id(any_store, "ncmec", "42-e1:MD5"), NewFeedback(
        "false_positive", "Not CSAM", "T-1", "analyst"))
    right = any_store.record_feedback(_entry_id(any_store, "ncmec", "42-e2:MD5"), NewFeedback(
        "confirmed", "", "T-2", "analyst"))
    assert (wrong.queued, right.queued) == (1, 1)

    _StandIn.put_status = [503, 200]  # the downvote fails once (the client retries no PUT)
    first = sync_bank(any_store, "ncmec")
    assert (first.feedback_sent, first.feedback_failed) == (1, 1)
    downvote = ("/hashsharing/v2/entries/42/e1/MD5/feedback",
                b'<feedbackSubmission xmlns="https://hashsharing.ncmec.org/hashsharing/v2">'
                b"<negative><reasonIds><guid>g-not-csam</guid></reasonIds></negative>"
                b"</feedbackSubmission>")
    upvote = ("/hashsharing/v2/entries/42/e2/MD5/feedback",
              b'<feedbackSubmission xmlns="https://hashsharing.ncmec.org/hashsharing/v2">'
              b"<affirmative /></feedbackSubmission>")
    assert _StandIn.puts == [downvote, upvote]
    status = _status(home, any_store, "ncmec")
    assert (status["pending"], status["sent"], status["failed_attempts"]) == (1, 1, 1)
    assert "503" in str(status["last_error"]) and "esp-pass" not in str(status["last_error"])
    shown = any_store.entries_feedback([_entry_id(any_store, "ncmec", "42-e1:MD5")])
    assert [f.upstream for f in shown] == ["pending"]

    second = sync_bank(any_store, "ncmec")
    assert (second.feedback_sent, second.feedback_failed) == (1, 0)
    assert _StandIn.puts == [downvote, upvote, downvote]
    assert sync_bank(any_store, "ncmec").feedback_sent == 0
    assert len(_StandIn.puts) == 3  # sent is sent: never again
    status = _status(home, any_store, "ncmec")
    assert (status["pending"], status["sent"], status["failed_attempts"]) == (0, 2, 1)


def test_a_downvote_needs_one_of_ncmecs_reasons(any_store: Store, ncmec_url: str) -> None:
    any_store.create_bank("ncmec")
    any_store.bind_exchange("ncmec", "ncmec", {"base_url": ncmec_url},
                            Credentials("env", "NCMEC_CREDENTIALS"))
    sync_bank(any_store, "ncmec")
    any_store.record_feedback(_entry_id(any_store, "ncmec", "42-e1:PDQ"), NewFeedback(
        "false_positive", "looks like a bridge", "T-3", "analyst"))
    assert sync_bank(any_store, "ncmec").feedback_failed == 1
    assert _StandIn.puts == []  # nothing sent that NCMEC could misread
    health = any_store.feedback_outbox_health("ncmec")
    assert health.pending == 1 and "Hash does not match, Not CSAM" in str(health.last_error)


def test_an_exchange_without_feedback_keeps_verdicts_pending(
    any_store: Store, tmp_path: Path,
) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(f"algorithm,hash\nmd5,{MD5_1}\n")
    any_store.create_bank("tat")
    any_store.bind_exchange("tat", "file", {"source": str(listing)})
    sync_bank(any_store, "tat")
    result = any_store.record_feedback(_entry_id(any_store, "tat", f"md5:{MD5_1}"),
                                       NewFeedback("confirmed", "", "T-4", "analyst"))
    assert result.queued == 1
    again = sync_bank(any_store, "tat")
    assert (again.feedback_sent, again.feedback_failed) == (0, 0)
    health = any_store.feedback_outbox_health("tat")
    assert (health.pending, health.sent, health.last_error) == (1, 0, None)
