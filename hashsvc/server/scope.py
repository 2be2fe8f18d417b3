"""The banks the calling key may see: every servicer asks here before it names, counts or
matches a bank.

Why "as if no other bank existed": a platform with a scoped key must learn nothing about the
banks it is not given, not even that one exists, so a bank outside the scope gets the very
answer a missing bank gets (NOT_FOUND, "no bank named …"), lists and counts leave it out, and
its allowlist entries do not suppress (suppression would tell the caller the hash is on it).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any

from hashsvc.errors import NotFoundError, OutOfScopeError
from hashsvc.limits import quote

# Set by the interceptor for the length of a call; None: every bank (an unscoped key, or auth off).
caller_banks: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "caller_banks", default=None)


def current() -> frozenset[str] | None:
    return caller_banks.get()


def visible(bank: str, scope: frozenset[str] | None = None) -> bool:
    scope = scope if scope is not None else current()
    return scope is None or bank in scope


def require(bank: str) -> str:
    """`bank`, or the NOT_FOUND a missing bank gets, if the caller may not see it."""
    if not visible(bank):
        raise NotFoundError(f"no bank named {quote(bank)}")
    return bank


def may_name(bank: str) -> str:
    """`bank`, if the caller may create a bank by that name or rename one to it: a scoped key
    that made a bank outside its scope would lose sight of it at once."""
    if not visible(bank):
        raise OutOfScopeError(f"this key is scoped to banks {', '.join(sorted(current() or ()))}"
                              f": it cannot name a bank {quote(bank)}")
    return bank


def only_visible(banks: Iterable[str]) -> list[str]:
    return [bank for bank in banks if visible(bank)]


def counts(counts: dict[str, Any]) -> dict[str, Any]:
    """A snapshot's counts as the caller may see them: its banks only, totals summed again
    from them (the overall totals would tell how much the other banks hold)."""
    scope = current()
    if scope is None:
        return counts
    by_bank = {bank: dict(algorithms) for bank, algorithms in counts.get("by_bank", {}).items()
               if bank in scope}
    by_algorithm: dict[str, int] = {}
    for algorithms in by_bank.values():
        for algorithm, count in algorithms.items():
            by_algorithm[algorithm] = by_algorithm.get(algorithm, 0) + count
    return {"entries": sum(by_algorithm.values()), "by_algorithm": by_algorithm,
            "by_bank": by_bank}
