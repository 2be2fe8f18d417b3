"""The console's session rows, on every store backend: what makes a sign-out final for every
server sharing the store (hashsvc/store/console_sessions.py)."""

from __future__ import annotations

import time

from hashsvc.store import Store


def test_a_session_is_live_from_start_until_it_ends_or_expires(any_store: Store) -> None:
    revision = any_store.revision()
    any_store.start_console_session("a" * 64, time.time() + 3600)
    any_store.start_console_session("b" * 64, time.time() - 1)  # already expired
    assert any_store.console_session_active("a" * 64)
    assert not any_store.console_session_active("b" * 64)
    assert not any_store.console_session_active("c" * 64)
    assert any_store.end_console_session("a" * 64)
    assert not any_store.console_session_active("a" * 64)
    assert not any_store.end_console_session("a" * 64)  # ended once only
    assert any_store.revision() == revision  # servers do not reload for a sign-in


def test_starting_a_session_forgets_the_expired_ones(any_store: Store) -> None:
    for n in range(3):
        any_store.start_console_session(f"old{n}", time.time() - 1)
    any_store.start_console_session("new", time.time() + 60)
    # The expired rows are gone, not merely inactive: ending one finds nothing to end.
    assert not any(any_store.end_console_session(f"old{n}") for n in range(3))
    assert any_store.end_console_session("new")
