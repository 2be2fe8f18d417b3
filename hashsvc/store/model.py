"""What a store holds, whatever engine keeps it: banks, entries, selectors, results, and the
checks every backend applies to names, descriptions, thresholds and kinds before writing.

Why apart from the engine: the SQLite store, its bulk importer and the server all speak these
types, and a second backend must speak the same ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.limits import LIMITS, check_name, check_tags, check_text, quote
from hashsvc.matching.strategies import PLAIN, MatchStrategies

BankKind = Literal["match", "allowlist"]
BANK_KINDS: tuple[BankKind, ...] = ("match", "allowlist")


@dataclass(frozen=True)
class Bank:
    id: int
    name: str
    description: str
    kind: BankKind
    enabled: bool
    tags: tuple[str, ...]
    thresholds: dict[str, int]
    created_at: float
    updated_at: float
    entry_count: int = 0
    strategies: MatchStrategies = PLAIN


class NewEntry(NamedTuple):
    """An entry as a hash list or an image folder supplies it, before it has an id.

    A NamedTuple, not a dataclass: imports make millions of them, and a tuple is the cheapest
    object Python has."""

    algorithm: str  # the fields are in BulkAdder's INSERT order: it binds an entry as it is
    hash: bytes
    external_id: str | None = None
    metadata: dict[str, Any] | None = None
    variant: str = ""  # "" for the hash itself; else which strategy's extra hash (strategies.py)


# What BulkAdder inserts: a NewEntry, or the same fields as a plain tuple (cheaper to pickle).
EntryRow = tuple[str, bytes, str | None, dict[str, Any] | None, str]


@dataclass(frozen=True)
class Entry:
    id: int
    bank: str
    algorithm: str
    hash: bytes
    external_id: str | None
    metadata: dict[str, Any] | None
    added_at: float
    disabled: bool
    disabled_reason: str | None
    variant: str = ""


@dataclass
class AddResult:
    added: int = 0
    duplicates: int = 0

    def __iadd__(self, other: AddResult) -> AddResult:
        self.added += other.added
        self.duplicates += other.duplicates
        return self


@dataclass(frozen=True)
class EntrySelector:
    """Which entries of a bank an operation touches: by id, by external id, or by hash."""

    ids: Sequence[int] = ()
    external_ids: Sequence[str] = ()
    hashes: Sequence[tuple[str, bytes]] = ()

    def is_empty(self) -> bool:
        return not (self.ids or self.external_ids or self.hashes)


@dataclass(frozen=True)
class StoreChanges:
    revision: int
    changed: frozenset[int]  # entry ids changed (added, disabled, enabled, removed)
    # (id, bank, algorithm, hash, external_id, metadata JSON, variant)
    active: list[tuple[Any, ...]]
    # entry id -> its exchange provenance as JSON (exchange_model.provenance_by_entry), for the
    # changed entries that have one
    provenance: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreStats:
    revision: int
    banks: int
    entries: int
    disabled: int
    by_bank_algorithm: dict[str, dict[str, int]] = field(default_factory=dict)
    # What servers match: entries not disabled, in enabled banks (snapshot plus live changes).
    served_by_bank_algorithm: dict[str, dict[str, int]] = field(default_factory=dict)


def bank_from_row(row: Sequence[Any]) -> Bank:
    """A bank from the columns every backend selects, in this order: id, name, description,
    kind, enabled, tags, thresholds, created_at, updated_at, entry count, strategies."""
    return Bank(id=row[0], name=row[1], description=row[2], kind=row[3], enabled=bool(row[4]),
                tags=tuple(json.loads(row[5])), thresholds=json.loads(row[6]),
                created_at=row[7], updated_at=row[8], entry_count=row[9],
                strategies=MatchStrategies.from_json(row[10]))


def validate_name(name: str, what: str = "bank name") -> str:
    return check_name(name, what)


def _validate_description(description: str) -> str:
    return check_text(description, "description", LIMITS.description_chars)


def validate_thresholds(thresholds: dict[str, int]) -> dict[str, int]:
    clean: dict[str, int] = {}
    for name, value in thresholds.items():
        algorithm = get_algorithm(name)
        if algorithm.exact:
            raise HashsvcError(f"{algorithm.name} is an exact hash: it has no threshold")
        if not isinstance(value, int) or not 0 <= value <= algorithm.bits:
            raise HashsvcError(
                f"invalid {algorithm.name} threshold {value!r}: must be 0..{algorithm.bits}"
            )
        clean[algorithm.name] = value
    return clean


def _validate_kind(kind: str) -> BankKind:
    if kind not in BANK_KINDS:
        raise HashsvcError(
            f"invalid bank kind {quote(kind)}: must be one of {', '.join(BANK_KINDS)}")
    return kind




def bank_changes(
    name: str, *, new_name: str | None, description: str | None, kind: str | None,
    enabled: bool | None, tags: Iterable[str] | None, thresholds: dict[str, int] | None,
    strategies: MatchStrategies | None,
) -> dict[str, Any]:
    """The checked columns `update_bank` writes (JSON text where a backend keeps JSON), for
    the fields given only: what every backend validates the same way before writing."""
    changes: dict[str, Any] = {}
    if new_name is not None and new_name != name:
        changes["name"] = validate_name(new_name)
    if description is not None:
        changes["description"] = _validate_description(description)
    if kind is not None:
        changes["kind"] = _validate_kind(kind)
    if enabled is not None:
        changes["enabled"] = enabled
    if tags is not None:
        changes["tags"] = json.dumps(check_tags(tags))
    if thresholds is not None:
        changes["thresholds"] = json.dumps(validate_thresholds(thresholds))
    if strategies is not None:
        changes["strategies"] = strategies.to_json()
    return changes
