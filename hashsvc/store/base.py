"""The one interface every store backend speaks, and `open_store`, which picks the backend.

Why a Protocol: the server, the indexer and the snapshot publisher must not care whether the
banks live in the embedded SQLite file or in a shared PostgreSQL database. Both backends keep the
same promises: every write is one transaction that bumps the revision; an import lands whole or
not at all; a hash is in a bank once (duplicates are counted, not stored); entries changed after a
revision are reported by `changes_since`, which is what servers' live deltas are built from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from hashsvc.matching.strategies import MatchStrategies
from hashsvc.store.exchange_model import (
    Credentials,
    ExchangeBinding,
    ExchangePage,
    PageResult,
    Provenance,
    SyncHealth,
)
from hashsvc.store.feedback_model import (
    Feedback,
    FeedbackResult,
    NewFeedback,
    OutboxHealth,
    OutboxItem,
)
from hashsvc.store.flood import FloodSettings, Release
from hashsvc.store.listing import EntryPage, EntryQuery
from hashsvc.store.model import (
    AddResult,
    Bank,
    Entry,
    EntryRow,
    EntrySelector,
    NewEntry,
    StoreChanges,
    StoreStats,
)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class BulkAdder(Protocol):
    """Adds entries inside a store's open import transaction (see `Store.bulk_add`); the
    counts are final in `result` once the `bulk_add` block has ended."""

    result: AddResult

    def add(self, entries: Iterable[EntryRow]) -> object: ...


class Store(Protocol):
    """Banks and entries, whatever engine keeps them. Implementations are thread-safe."""

    @property
    def target(self) -> str:
        """What `open_store` takes to open this store again (may hold a password: never log)."""
        ...

    @property
    def location(self) -> str:
        """Where the store is, for messages and logs: a path, or a URL with no password."""
        ...

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc: object) -> None: ...
    def revision(self) -> int: ...

    def wait_for_change(self, timeout: float) -> bool:
        """Block until another write may have changed the store (True) or `timeout` seconds
        pass (False). A hint to wake a watcher early, never the truth: it may miss a change
        or wake for none, so a caller reads `revision()` after every wait either way."""
        ...

    def create_bank(
        self, name: str, *, description: str = "", kind: str = "match",
        tags: Iterable[str] = (), thresholds: dict[str, int] | None = None,
        enabled: bool = True, strategies: MatchStrategies | None = None,
    ) -> Bank: ...

    def get_bank(self, name: str) -> Bank: ...
    def list_banks(self) -> list[Bank]: ...

    def entry_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        """(enabled, disabled) entries by bank name, then algorithm; a bank with no entries
        is absent. A pass over the entries, so asked for only where shown (ListBanks)."""
        ...

    def update_bank(
        self, name: str, *, new_name: str | None = None, description: str | None = None,
        kind: str | None = None, enabled: bool | None = None, tags: Iterable[str] | None = None,
        thresholds: dict[str, int] | None = None, strategies: MatchStrategies | None = None,
    ) -> Bank: ...

    def delete_bank(self, name: str) -> int: ...

    def bulk_add(
        self, bank_name: str, *, expected: int = 0
    ) -> AbstractContextManager[BulkAdder]: ...

    def add_entries(self, bank_name: str, entries: Iterable[NewEntry]) -> AddResult: ...
    def get_entry(self, entry_id: int) -> Entry: ...
    def find_entries(self, bank_name: str, selector: EntrySelector) -> list[Entry]: ...

    def list_entries(self, query: EntryQuery) -> EntryPage:
        """One page of the entries `query` selects, by ascending id (see `listing`); raises
        `NotFoundError` for a bank that does not exist."""
        ...

    def set_disabled(
        self, bank_name: str, selector: EntrySelector, disabled: bool, reason: str | None = None
    ) -> int: ...

    def remove_entries(self, bank_name: str, selector: EntrySelector) -> int: ...
    def iter_active_entries(self, batch: int = 100_000) -> Iterator[list[tuple[Any, ...]]]: ...
    def changes_since(self, revision: int) -> StoreChanges: ...
    def stats(self) -> StoreStats: ...

    def bind_exchange(self, bank_name: str, exchange: str, config: dict[str, Any],
                      credentials: Credentials | None = None) -> ExchangeBinding:
        """Bind a bank to an exchange (see exchange_model); re-binding with another exchange
        or config starts its sync again from the beginning."""
        ...

    def exchange_bindings(self, bank_name: str | None = None) -> list[ExchangeBinding]:
        """The binding of `bank_name` (`NotFoundError` if it has none), or of every bank."""
        ...

    def apply_exchange_page(self, bank_name: str, page: ExchangePage,
                            expected_checkpoint: str | None) -> PageResult:
        """Apply one page of upstream changes and store its checkpoint, in one transaction;
        refused (`WriterBusyError`) if the stored checkpoint is no longer the expected one."""
        ...

    def entry_provenance(self, entry_id: int) -> list[Provenance]: ...

    def entries_provenance(self, entry_ids: Sequence[int]) -> list[Provenance]:
        """The provenance of many entries at once (a page of ListEntries), by entry id."""
        ...

    def record_exchange_sync(self, bank_name: str, totals: PageResult,
                             error: str | None = None) -> None:
        """Add a finished (or, with `error`, failed) sync's counts to the bank's SyncHealth;
        does not bump the revision."""
        ...

    def set_exchange_alert_after(self, bank_name: str, seconds: float) -> None:
        """How long the bank may go without a successful sync before it alerts."""
        ...

    def exchange_health(self, bank_name: str | None = None) -> list[SyncHealth]:
        """The SyncHealth of `bank_name` (`NotFoundError` if it is not bound), or of every
        bound bank."""
        ...

    def record_feedback(self, entry_id: int, feedback: NewFeedback) -> FeedbackResult:
        """Record an analyst's verdict on an entry, in one transaction with its consequences:
        a false positive disables the entry (an entry already disabled keeps its first reason:
        the verdict is recorded beside it), and the verdict is queued for the entry's exchange
        if its bank is bound to one. `NotFoundError` for an unknown entry."""
        ...

    def entries_feedback(self, entry_ids: Sequence[int]) -> list[Feedback]:
        """Every verdict given on these entries, by entry then time."""
        ...

    def pending_feedback(self, bank_name: str) -> list[OutboxItem]:
        """The bank's verdicts not yet sent to its exchange, oldest first."""
        ...

    def mark_feedback_sent(self, item: OutboxItem, error: str | None = None) -> None:
        """Stamp a send of `item`: sent (never pending again), or failed with `error`."""
        ...

    def feedback_outbox_health(self, bank_name: str) -> OutboxHealth: ...

    def set_flood_guard(self, bank_name: str, settings: FloodSettings) -> None:
        """The bank's flood-guard thresholds (flood.py); bumps the revision, so servers apply
        them within a reload interval."""
        ...

    def flood_guard_settings(self) -> dict[str, FloodSettings]:
        """The thresholds of every bank that has its own, by bank name."""
        ...

    def release_entry(self, entry_id: int, reason: str | None = None) -> Release:
        """Record that an analyst released a quarantined entry (`NotFoundError` if there is
        no such entry); bumps the revision, like any entry change."""
        ...

    def flood_releases(self, since_revision: int = 0) -> list[Release]:
        """The releases recorded after `since_revision`, oldest first."""
        ...

    def start_console_session(self, id_digest: str, expires_at: float) -> None:
        """Record a web console session (by a digest of its id) until `expires_at`; forgets
        expired ones. Does not bump the revision (console_sessions.py says why it is here)."""
        ...

    def console_session_active(self, id_digest: str) -> bool:
        """True while the session was started, not ended, and has not expired."""
        ...

    def end_console_session(self, id_digest: str) -> bool:
        """End the session for every server sharing this store; False if it was not live."""
        ...

    def writer_lock(self, name: str, *, wait: float = 0.0) -> AbstractContextManager[None]:
        """Hold the single-writer lock `name` (e.g. "publish") across every process using this
        store; raise a `HashsvcError` naming the holder if it is not free within `wait` s."""
        ...


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


_PASSWORD_IN_NETLOC = re.compile(r"(://[^/@:]*:)[^/@]*@")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact(target: str | Path) -> str:
    """`target` fit for a log line or an error: a URL's password replaced by ***."""
    text = str(target)
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_NETLOC.sub(r"\1***@", text))


def open_store(target: str | Path, *, read_only: bool = False) -> Store:
    """The store at `target`: a `postgresql://` URL, else the path of a SQLite file.

    `read_only` (a scan replica's SQLite file): opened so that nothing can write it. A
    PostgreSQL store is opened as always (its schema is migrated by whoever opens it first)."""
    if is_postgres(target):
        from hashsvc.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(str(target))
    from hashsvc.store.sqlite import SqliteStore

    return SqliteStore(Path(target), read_only=read_only)
