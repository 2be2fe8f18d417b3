"""ListRecentMatches: the latest matches of this server's audit trail, with each entry's state
now (disabled? which verdicts?), for the analyst who confirms or rejects them.

Why from the audit trail and not the store: matches are never stored (a scan writes nothing
but its audit line), and the trail already holds what an analyst may see of one: ids and
hashes, never an image. Its limit follows: a server reads its own trail, so matches made by
scan replicas elsewhere are in theirs (README "Web console").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hashsvc_client.v1 import admin_pb2, types_pb2

from hashsvc.audit_tail import Tail, unix_time
from hashsvc.errors import HashsvcError, NotFoundError
from hashsvc.limits import LIMITS, check_name, quote
from hashsvc.server import convert, scope
from hashsvc.store import Entry, EntrySelector, Store

DEFAULT_LIMIT = 50
# Only the lines of scans with matches are parsed: AuditLog writes compact JSON, so a scan
# record with a match has this, and one without (with --audit-all-scans) has `"matches":[]`.
_WITH_MATCHES = b'"matches":[{'

_TRANSFORMS = dict(types_pb2.Transform.items())


def recent_matches(store: Store, audit_path: Path, limit: int,
                   bank: str) -> admin_pb2.ListRecentMatchesResponse:
    if not 0 <= limit <= LIMITS.recent_matches:
        raise HashsvcError(f"limit must be between 0 and {LIMITS.recent_matches} (0: "
                           f"{DEFAULT_LIMIT}), got {limit}")
    if bank:
        scope.require(check_name(bank))
        if bank not in {b.name for b in store.list_banks()}:
            raise NotFoundError(f"no bank named {quote(bank)}")
    wanted = limit or DEFAULT_LIMIT
    tail = Tail(audit_path, _WITH_MATCHES)
    found: list[admin_pb2.RecentMatch] = []
    for record in tail:
        for match in _matches(record, bank):
            found.append(match)
            if len(found) == wanted:
                break
        if len(found) == wanted:
            break
    _add_entry_state(store, found)
    return admin_pb2.ListRecentMatchesResponse(matches=found, scan_bounded=tail.bounded)


def _matches(record: dict[str, Any], bank: str) -> Iterator[admin_pb2.RecentMatch]:
    """The record's matches the caller may see (in `bank` if one is named)."""
    matches = record.get("matches")
    if record.get("event") != "scan" or not isinstance(matches, list):
        return
    hashes = record.get("hashes")
    uploaded = [types_pb2.Hash(algorithm=convert.ALGORITHM_TO_PROTO[name], hex=str(value))
                for name, value in (hashes.items() if isinstance(hashes, dict) else ())
                if name in convert.ALGORITHM_TO_PROTO]
    for match in matches:
        if not isinstance(match, dict):
            continue
        where = str(match.get("bank", ""))
        if not scope.visible(where) or (bank and where != bank):
            continue
        yield admin_pb2.RecentMatch(
            time=unix_time(record.get("time")), request_id=str(record.get("request_id", "")),
            method=str(record.get("method", "")), caller=str(record.get("caller", "")),
            snapshot_version=str(record.get("snapshot_version", "")), hashes=uploaded,
            match=_match(match))


def _match(match: dict[str, Any]) -> types_pb2.Match:
    transform = f"TRANSFORM_{str(match.get('query_transform', 'identity')).upper()}"
    return types_pb2.Match(
        bank=str(match.get("bank", "")), entry_id=_int(match.get("entry_id")),
        external_id=str(match.get("external_id") or ""),
        algorithm=convert.ALGORITHM_TO_PROTO.get(str(match.get("algorithm")),
                                                 types_pb2.ALGORITHM_UNSPECIFIED),
        distance=_int(match.get("distance")), threshold=_int(match.get("threshold")),
        query_transform=_TRANSFORMS.get(transform, types_pb2.TRANSFORM_UNSPECIFIED),
        query_trimmed=bool(match.get("query_trimmed", False)),
        entry_variant=str(match.get("entry_variant") or ""),
        hash_index=_int(match.get("hash_index")),
        status=(types_pb2.MATCH_STATUS_QUARANTINED if match.get("status") == "quarantined"
                else types_pb2.MATCH_STATUS_MATCHED))


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _add_entry_state(store: Store, found: list[admin_pb2.RecentMatch]) -> None:
    """Each match's entry as it is now: a handful of queries for the whole answer (one per
    bank, one for every verdict), not one per match."""
    by_bank: dict[str, set[int]] = {}
    for item in found:
        by_bank.setdefault(item.match.bank, set()).add(item.match.entry_id)
    entries: dict[int, Entry] = {}
    for name, ids in by_bank.items():
        try:
            entries.update((e.id, e) for e in store.find_entries(
                name, EntrySelector(ids=sorted(ids))))
        except NotFoundError:  # the bank was deleted since: its entries are gone
            continue
    verdicts: dict[int, list[admin_pb2.EntryFeedback]] = {}
    for feedback in store.entries_feedback(sorted(entries)):
        verdicts.setdefault(feedback.entry_id, []).append(convert.feedback_to_proto(feedback))
    for item in found:
        entry = entries.get(item.match.entry_id)
        if entry is None or entry.bank != item.match.bank:
            item.entry_removed = True
            continue
        item.entry_disabled = entry.disabled
        item.entry_disabled_reason = entry.disabled_reason or ""
        item.feedback.extend(verdicts.get(entry.id, ()))
