"""Match feedback: an analyst's verdict on a match (confirmed, or a false positive), as the
store keeps it, and the outbox rows that carry it back to the entry's exchange.

Why a record of its own rather than a field of the entry: a verdict is a fact about a case
(who decided, when, why, for which upload), and one entry gathers many of them over its life;
the entry only carries the consequence (a false positive disables it). Never an image: the
scanned hash and the platform's upload id are the most a verdict may name.
"""

from __future__ import annotations

from dataclasses import dataclass

from hashsvc.errors import HashsvcError
from hashsvc.limits import LIMITS, check_text

CONFIRMED = "confirmed"
FALSE_POSITIVE = "false_positive"
VERDICTS = (CONFIRMED, FALSE_POSITIVE)
CASE_ID_CHARS = 128  # a ticket or case number, not prose
UPLOAD_ID_CHARS = 256


@dataclass(frozen=True)
class NewFeedback:
    """A verdict as an analyst gives it. `given_by` is the API key's name (or, from the CLI,
    the operating-system user), never a key."""

    verdict: str
    reason: str
    case_id: str
    given_by: str
    scanned_hash: str = ""  # "algorithm:hex" of the upload that matched, if the platform has it
    upload_id: str = ""  # the platform's own id for the upload

    def checked(self) -> NewFeedback:
        """Itself, or the error that names the field that is wrong."""
        if self.verdict not in VERDICTS:
            raise HashsvcError(f"verdict must be {' or '.join(VERDICTS)}, got "
                               f"{self.verdict[:LIMITS.quoted_chars]!r}")
        if self.verdict == FALSE_POSITIVE and not self.reason.strip():
            raise HashsvcError("a false positive needs a reason: it disables the entry, and "
                               "the reason is what the next analyst reads")
        check_text(self.reason, "reason", LIMITS.reason_chars)
        check_text(self.case_id, "case id", CASE_ID_CHARS)
        check_text(self.upload_id, "upload id", UPLOAD_ID_CHARS)
        check_text(self.scanned_hash, "scanned hash", 200)
        return self


@dataclass(frozen=True)
class Feedback:
    id: int
    entry_id: int
    bank: str
    verdict: str
    reason: str
    case_id: str
    given_by: str
    given_at: float
    scanned_hash: str
    upload_id: str
    # what became of it upstream: "" (the entry came from no exchange), "pending", "sent"
    upstream: str = ""


@dataclass(frozen=True)
class FeedbackResult:
    """What recording a verdict did. A false positive on an entry already disabled keeps the
    first reason (`disabled_reason`) and records this verdict beside it: `disabled_now` says
    whether this verdict is the one that disabled the entry."""

    feedback_id: int
    disabled_now: bool
    disabled_reason: str | None
    queued: int  # outbox rows made: one per upstream id of an exchange-bound entry


@dataclass(frozen=True)
class OutboxItem:
    """One verdict waiting to be sent to the exchange under one upstream id."""

    feedback_id: int
    upstream_id: str
    verdict: str
    reason: str
    attempts: int


@dataclass(frozen=True)
class OutboxHealth:
    """How a bank's feedback outbox stands, for `indexer exchange status`."""

    pending: int
    sent: int
    failed_attempts: int  # send attempts that failed, since the bank was bound
    last_error: str | None
    last_error_at: float | None


def disabled_reason(feedback: NewFeedback) -> str:
    """The reason a false positive disables its entry with: the case travels with it, so that
    `entries list --disabled` says which case decided it without a second lookup."""
    case = f" (case {feedback.case_id})" if feedback.case_id else ""
    return f"false positive{case}: {feedback.reason.strip()}"[:LIMITS.reason_chars]
