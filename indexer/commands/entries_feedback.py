"""`indexer entries feedback ENTRY`: an analyst's verdict on a match, straight into the store.

Why store-direct like the other entries verbs: an analyst on the admin host needs no API key
and no running server to record a verdict. What the server's ReportMatchFeedback does, this
does too: the verdict (and, for a false positive, the disable) lands in one store transaction,
is queued for the bank's exchange, and is appended to the data home's audit log
(`<home>/audit.jsonl`, the server's default path).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from hashsvc.audit import AuditLog
from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import parse_hash
from hashsvc.store.feedback_model import VERDICTS, NewFeedback
from indexer.commands.common import add_command, home, open_store, say, when_served

_VERDICT_FLAGS = {v.replace("_", "-"): v for v in VERDICTS}  # --verdict false-positive


def register(verbs: Any) -> None:
    feedback = add_command(
        verbs, "feedback", "Record an analyst's verdict on a match of entry ENTRY (a match's "
        "entry_id): confirmed, or false-positive, which disables the entry (live within about "
        "a second) with the reason. An entry already disabled keeps its first reason; the "
        "verdict is recorded beside it. If the bank is bound to an exchange that takes "
        "feedback, the verdict is sent upstream by the bank's next sync.",
        "indexer entries feedback 17 --verdict false-positive --reason 'blank frame' "
        "--case T-881", _feedback)
    feedback.add_argument("entry", type=int, metavar="ENTRY", help="the entry's id")
    feedback.add_argument("--verdict", required=True, choices=sorted(_VERDICT_FLAGS))
    feedback.add_argument("--reason", default="",
                          help="why (required for false-positive; kept with the entry)")
    feedback.add_argument("--case", default="", dest="case_id",
                          help="the case or ticket this verdict belongs to")
    feedback.add_argument("--scanned-hash", metavar="ALGO:HEX",
                          help="the upload's hash, if kept (never the image)")
    feedback.add_argument("--upload-id", default="", help="the platform's id for the upload")


def _feedback(args: argparse.Namespace) -> int:
    scanned = ""
    if args.scanned_hash:
        algorithm, sep, value = args.scanned_hash.partition(":")
        if not sep:
            raise HashsvcError(f"invalid --scanned-hash {args.scanned_hash!r}: expected "
                               "ALGORITHM:HEX")
        parsed = parse_hash(algorithm, value)
        scanned = f"{parsed.algorithm}:{parsed.hex}"
    feedback = NewFeedback(verdict=_VERDICT_FLAGS[args.verdict], reason=args.reason,
                           case_id=args.case_id, given_by=f"indexer:{getpass.getuser()}",
                           scanned_hash=scanned, upload_id=args.upload_id).checked()
    with open_store(args) as store:
        entry = store.get_entry(args.entry)
        result = store.record_feedback(entry.id, feedback)
        bank = store.get_bank(entry.bank)
    record: dict[str, Any] = {
        "bank": entry.bank, "entry_id": entry.id, "verdict": feedback.verdict,
        "feedback_id": result.feedback_id, "case_id": feedback.case_id,
        "reason": feedback.reason, "disabled_now": result.disabled_now,
        "queued_upstream": result.queued, "scanned_hash": scanned,
        "upload_id": feedback.upload_id}
    audit = AuditLog(home(args, create=True).root / "audit.jsonl")
    try:
        audit.event("match_feedback", caller=feedback.given_by, **record)
    finally:
        audit.close()
    if result.disabled_now:
        say(f"entry {entry.id} disabled: {when_served(bank)}")
    elif result.disabled_reason is not None:
        say(f"entry {entry.id} was already disabled; its first reason is kept "
            f"({result.disabled_reason!r}) and this verdict is recorded beside it")
    if result.queued:
        say(f"queued for the exchange of bank {entry.bank!r}: sent by its next "
            f"`indexer exchange sync {entry.bank}`")
    sys.stdout.write(json.dumps(record | {"disabled_reason": result.disabled_reason},
                                ensure_ascii=False) + "\n")
    return 0
