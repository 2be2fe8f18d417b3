"""What the console needs from the store, on every backend: session rows (what makes a sign-out
final for every server sharing the store, hashsvc/store/console_sessions.py) and entry counts
(the bank list), the latter over gRPC too."""

from __future__ import annotations

import time
from pathlib import Path

from hashsvc_client import Client

from hashsvc.store import EntrySelector, NewEntry, Store
from tests.server_process import ServerProcess


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


def test_entry_counts_split_each_bank_by_algorithm_and_disabled(any_store: Store) -> None:
    any_store.create_bank("a")
    any_store.create_bank("empty")
    any_store.add_entries("a", [NewEntry("pdq", bytes([n]) * 32, f"p{n}") for n in range(3)]
                          + [NewEntry("md5", bytes([n]) * 16, f"m{n}") for n in range(2)])
    any_store.set_disabled("a", EntrySelector(external_ids=("p0", "m1")), True, "fp")
    assert any_store.entry_counts() == {"a": {"pdq": (2, 1), "md5": (1, 1)}}


def test_list_banks_counts_entries_over_grpc_only_when_asked(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--http-listen", "off") as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("counted")
        admin.add_entries("counted", [(("md5", f"{n:032x}"), f"e{n}", None) for n in range(4)])
        admin.set_entries_disabled("counted", external_ids=["e0"], reason="fp")
        plain = admin.list_banks()[0]
        assert plain.entry_count == 4 and not plain.entry_counts
        counts = admin.list_banks(entry_counts=True)[0].entry_counts
        assert {k: (v.enabled, v.disabled) for k, v in counts.items()} == {"md5": (3, 1)}
