"""WHERE clauses for an `EntrySelector`, shared by the SQL stores.

Why chunked: a selector may name thousands of ids or hashes; SQLite bounds the variables of a
statement, and one huge statement would hold a write lock for long, so each clause covers a
bounded number of items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.store.model import EntrySelector

_CHUNK = 500  # selector items per statement: far below SQLite's bound-variable limit


def _selector_sql(
    bank_id: int, selector: EntrySelector, alias: str = "e.", mark: str = "?"
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """WHERE clauses covering `selector`, a bounded number of items each; `alias` is "" where
    SQLite allows no table alias; `mark` is the driver's placeholder (PostgreSQL's is %s)."""
    for where, args in _selector_clauses(bank_id, selector, alias):
        yield (where if mark == "?" else where.replace("?", mark)), args


def _selector_clauses(
    bank_id: int, selector: EntrySelector, alias: str
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    if selector.is_empty():
        raise HashsvcError("select entries by id, external id or hash")
    prefix = f"WHERE {alias}bank_id = ? AND "
    for start in range(0, len(selector.ids), _CHUNK):
        chunk = list(selector.ids[start : start + _CHUNK])
        yield f"{prefix}{alias}id IN ({', '.join('?' * len(chunk))})", (bank_id, *chunk)
    for start in range(0, len(selector.external_ids), _CHUNK):
        names = list(selector.external_ids[start : start + _CHUNK])
        yield (f"{prefix}{alias}external_id IN ({', '.join('?' * len(names))})",
               (bank_id, *names))
    for start in range(0, len(selector.hashes), _CHUNK):
        pairs = selector.hashes[start : start + _CHUNK]
        clause = " OR ".join(f"({alias}algorithm = ? AND {alias}hash = ?)" for _ in pairs)
        yield f"{prefix}({clause})", (bank_id, *(v for pair in pairs for v in pair))


def reason_sql(disabled: bool, mark: str = "?") -> str:
    """What `set_disabled` sets `disabled_reason` to, with one `mark` for the new reason.

    Disabling an entry that is already disabled with a reason keeps that first reason (a
    confirmed false positive's case, say) rather than overwrite it; enabling clears it."""
    if not disabled:
        return mark
    return (f"CASE WHEN disabled AND disabled_reason IS NOT NULL THEN disabled_reason"
            f" ELSE {mark} END")
