"""What the SQL stores do alike, written once; what differs per engine is a `Dialect`.

Why shared: SQLite and PostgreSQL create, read and update banks and read entries with the same
steps (validate, one write transaction, read back) and differ only in placeholders, how a flag is
stored, how a name sorts and which driver error means "name taken". Two copies had already begun
to drift; one copy with the differences named keeps the two backends' promises the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Generic, Self, TypeVar

from hashsvc.errors import AlreadyExistsError, HashsvcError, NotFoundError
from hashsvc.limits import check_tags, quote
from hashsvc.matching.strategies import MatchStrategies
from hashsvc.store import console_sessions, exchange_sql, feedback_sql, flood
from hashsvc.store.exchange_model import (
    Credentials,
    ExchangeBinding,
    ExchangePage,
    PageResult,
    Provenance,
    SyncHealth,
)
from hashsvc.store.feedback_model import (
    FALSE_POSITIVE,
    Feedback,
    FeedbackResult,
    NewFeedback,
    OutboxHealth,
    OutboxItem,
)
from hashsvc.store.flood import FloodSettings, Release
from hashsvc.store.listing import EntryPage, EntryQuery, page_of, query_sql
from hashsvc.store.model import (
    AddResult,
    Bank,
    Entry,
    EntrySelector,
    NewEntry,
    _validate_description,
    _validate_kind,
    bank_changes,
    bank_from_row,
    validate_name,
    validate_thresholds,
)
from hashsvc.store.selectors import _selector_sql

T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    """What one SQL engine spells differently in the bank statements."""

    mark: str  # the driver's placeholder ("?" or "%s")
    integrity_error: type[Exception]  # what the driver raises for a name already taken
    revision_sql: str  # an expression for the revision the open write transaction set
    name_order: str  # ORDER BY for bank names: bytewise on both engines
    flag: Callable[[bool], object]  # a boolean as the column stores it


class SqlStoreBase:
    """Banks (create, get, list, update) and entry reads for a store that provides `_in_write`
    (run a function in one write transaction that bumped the revision), `_rows` (one read) and
    `bulk_add`."""

    dialect: ClassVar[Dialect]

    def _in_write(self, body: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _in_side_write(self, body: Callable[[Any], T]) -> T:
        """A write transaction that changes no entry, so does not bump the revision: what a
        server or `publish` reads as "the store changed" must not move for bookkeeping."""
        raise NotImplementedError

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def bulk_add(self, bank_name: str, *, expected: int = 0) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sql(self, text: str) -> str:
        """`text` written with "?" placeholders, in this engine's."""
        mark = self.dialect.mark
        return text if mark == "?" else text.replace("?", mark)

    def create_bank(
        self, name: str, *, description: str = "", kind: str = "match",
        tags: Iterable[str] = (), thresholds: dict[str, int] | None = None,
        enabled: bool = True, strategies: MatchStrategies | None = None,
    ) -> Bank:
        validate_name(name)
        _validate_description(description)
        tag_list = check_tags(tags)
        clean_thresholds = validate_thresholds(thresholds or {})
        now = time.time()
        row = (name, description, _validate_kind(kind), self.dialect.flag(enabled),
               json.dumps(tag_list), json.dumps(clean_thresholds),
               (strategies or MatchStrategies()).to_json(), now, now)
        sql = self._sql("INSERT INTO banks (name, description, kind, enabled, tags, thresholds,"
                        " strategies, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        def insert(conn: Any) -> None:
            conn.execute(sql, row)

        try:
            self._in_write(insert)
        except self.dialect.integrity_error:
            raise AlreadyExistsError(f"bank {quote(name)} already exists") from None
        return self.get_bank(name)

    def get_bank(self, name: str) -> Bank:
        banks = self._query_banks("WHERE b.name = ?", (name,))
        if not banks:
            raise NotFoundError(f"no bank named {quote(name)}")
        return banks[0]

    def list_banks(self) -> list[Bank]:
        return self._query_banks("", ())

    def entry_counts(self) -> dict[str, dict[str, tuple[int, int]]]:
        rows = self._rows(
            "SELECT b.name, e.algorithm, COUNT(*),"
            " COALESCE(SUM(CASE WHEN e.disabled THEN 1 ELSE 0 END), 0)"
            " FROM entries e JOIN banks b ON b.id = e.bank_id GROUP BY b.name, e.algorithm")
        counts: dict[str, dict[str, tuple[int, int]]] = {}
        for bank, algorithm, total, disabled in rows:
            counts.setdefault(bank, {})[algorithm] = (int(total) - int(disabled), int(disabled))
        return counts

    def _query_banks(self, where: str, args: tuple[Any, ...]) -> list[Bank]:
        rows = self._rows(self._sql(
            "SELECT b.id, b.name, b.description, b.kind, b.enabled, b.tags, b.thresholds,"
            " b.created_at, b.updated_at,"
            " (SELECT COUNT(*) FROM entries e WHERE e.bank_id = b.id), b.strategies"
            f" FROM banks b {where} ORDER BY {self.dialect.name_order}"), args)
        return [bank_from_row(r) for r in rows]

    def update_bank(
        self, name: str, *, new_name: str | None = None, description: str | None = None,
        kind: str | None = None, enabled: bool | None = None, tags: Iterable[str] | None = None,
        thresholds: dict[str, int] | None = None, strategies: MatchStrategies | None = None,
    ) -> Bank:
        """Change only the fields given; `thresholds` replaces the whole override map.

        Enabling or disabling a bank is live: its entries are stamped as changed, so running
        servers add them to (or tombstone them in) their delta within a reload interval, as
        for an entry change, whether or not a snapshot was published meanwhile. That is what
        makes a disabled bank a staging area: import, review, enable. Changed strategies,
        thresholds, kind and tags apply to scans from the next snapshot; extra hashes of known
        images already added are not recomputed (re-add the images to get them)."""
        bank = self.get_bank(name)
        changes = bank_changes(name, new_name=new_name, description=description, kind=kind,
                               enabled=enabled, tags=tags, thresholds=thresholds,
                               strategies=strategies)
        if not changes:
            return bank
        toggled = "enabled" in changes and bool(changes["enabled"]) != bank.enabled
        if "enabled" in changes:
            changes["enabled"] = self.dialect.flag(bool(changes["enabled"]))
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{column} = ?" for column in changes)
        update = self._sql(f"UPDATE banks SET {assignments} WHERE id = ?")
        stamp = self._sql(
            f"UPDATE entries SET changed_rev = {self.dialect.revision_sql} WHERE bank_id = ?")

        def apply(conn: Any) -> None:
            conn.execute(update, (*changes.values(), bank.id))
            if toggled:
                conn.execute(stamp, (bank.id,))

        try:
            self._in_write(apply)
        except self.dialect.integrity_error:
            raise AlreadyExistsError(f"bank {quote(str(new_name))} already exists") from None
        return self.get_bank(changes.get("name", name))

    def add_entries(self, bank_name: str, entries: Iterable[NewEntry]) -> AddResult:
        with self.bulk_add(bank_name) as adder:
            adder.add(entries)
        result: AddResult = adder.result
        return result

    def get_entry(self, entry_id: int) -> Entry:
        entries = self._query_entries("WHERE e.id = ?", (entry_id,))
        if not entries:
            raise NotFoundError(f"no entry with id {entry_id}")
        return entries[0]

    def find_entries(self, bank_name: str, selector: EntrySelector) -> list[Entry]:
        bank = self.get_bank(bank_name)
        found: list[Entry] = []
        for where, args in _selector_sql(bank.id, selector):
            found.extend(self._query_entries(where, args))
        return sorted({e.id: e for e in found}.values(), key=lambda e: e.id)

    def list_entries(self, query: EntryQuery) -> EntryPage:
        for bank in query.checked().banks:
            self.get_bank(bank)  # an unknown bank is an error, not an empty page
        where, args = query_sql(query, self.dialect.mark)
        return page_of(query, self._query_entries(where, args, order=False))

    def _query_entries(
        self, where: str, args: tuple[Any, ...], *, order: bool = True
    ) -> list[Entry]:
        rows = self._rows(self._sql(
            "SELECT e.id, b.name, e.algorithm, e.hash, e.external_id, e.metadata, e.added_at,"
            " e.disabled, e.disabled_reason, e.variant"
            f" FROM entries e JOIN banks b ON b.id = e.bank_id {where}"
            f"{' ORDER BY e.id' if order else ''}"), args)
        return [
            Entry(id=r[0], bank=r[1], algorithm=r[2], hash=bytes(r[3]), external_id=r[4],
                  metadata=json.loads(r[5]) if r[5] else None, added_at=r[6],
                  disabled=bool(r[7]), disabled_reason=r[8], variant=r[9])
            for r in rows
        ]

    # ---- exchanges (exchange_sql.py) ---------------------------------------------------------

    def _runner(self, conn: Any) -> exchange_sql.Run:
        """exchange_sql's statements on `conn`, in this engine's placeholders."""
        def run(sql: str, args: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
            cursor = conn.execute(self._sql(sql), args)
            rows = cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount
        return run

    def _read_runner(self) -> exchange_sql.Run:
        return lambda sql, args: (self._rows(self._sql(sql), args), -1)

    def bind_exchange(self, bank_name: str, exchange: str, config: dict[str, Any],
                      credentials: Credentials | None = None) -> ExchangeBinding:
        bank = self.get_bank(bank_name)
        self._in_write(lambda conn: exchange_sql.bind(
            self._runner(conn), bank.id, exchange, config, credentials))
        return self.exchange_bindings(bank_name)[0]

    def exchange_bindings(self, bank_name: str | None = None) -> list[ExchangeBinding]:
        return exchange_sql.bindings(self._read_runner(), bank_name)

    def apply_exchange_page(self, bank_name: str, page: ExchangePage,
                            expected_checkpoint: str | None) -> PageResult:
        """One write transaction; a PostgreSQL write re-run after a lost connection replays
        the upserts it had already taken from the page (`Replayable`)."""
        bank = self.get_bank(bank_name)
        replayable = replace(page, upserts=Replayable(page.upserts))

        def body(conn: Any) -> dict[str, int]:
            revision = int(conn.execute(f"SELECT {self.dialect.revision_sql}").fetchone()[0])
            return asdict(exchange_sql.apply_page(
                self._runner(conn), bank.id, bank.name, revision, replayable,
                expected_checkpoint))

        return PageResult(**self._in_write(body))

    def entry_provenance(self, entry_id: int) -> list[Provenance]:
        return exchange_sql.provenance(self._read_runner(), [entry_id])

    def entries_provenance(self, entry_ids: Sequence[int]) -> list[Provenance]:
        return exchange_sql.provenance(self._read_runner(), entry_ids)

    def record_exchange_sync(self, bank_name: str, totals: PageResult,
                             error: str | None = None) -> None:
        bank = self.get_bank(bank_name)
        self._in_side_write(lambda conn: exchange_sql.record_sync(
            self._runner(conn), bank.id, totals, error))

    def set_exchange_alert_after(self, bank_name: str, seconds: float) -> None:
        if not seconds > 0:
            raise HashsvcError(f"bank {quote(bank_name)}: the alert threshold must be a "
                               f"positive number of seconds, got {seconds:g}")
        bank = self.get_bank(bank_name)
        self._in_side_write(lambda conn: exchange_sql.set_alert_after(
            self._runner(conn), bank.id, seconds))

    def exchange_health(self, bank_name: str | None = None) -> list[SyncHealth]:
        return exchange_sql.health(self._read_runner(), bank_name)

    # ---- match feedback (feedback_sql.py) ------------------------------------------------------

    def record_feedback(self, entry_id: int, feedback: NewFeedback) -> FeedbackResult:
        """A false positive disables its entry, so it is a revision-bumping write (servers
        drop the entry through their delta); a confirmation changes no entry, so it is not."""
        feedback.checked()
        flag = self.dialect.flag(True)

        def body(conn: Any, revision: int | None) -> dict[str, Any]:
            return asdict(feedback_sql.record(self._runner(conn), entry_id, feedback, revision,
                                              flag))

        if feedback.verdict == FALSE_POSITIVE:
            def disabling(conn: Any) -> dict[str, Any]:
                revision = int(conn.execute(f"SELECT {self.dialect.revision_sql}").fetchone()[0])
                return body(conn, revision)
            return FeedbackResult(**self._in_write(disabling))
        return FeedbackResult(**self._in_side_write(lambda conn: body(conn, None)))

    def entries_feedback(self, entry_ids: Sequence[int]) -> list[Feedback]:
        return feedback_sql.of_entries(self._read_runner(), entry_ids)

    def pending_feedback(self, bank_name: str) -> list[OutboxItem]:
        return feedback_sql.pending(self._read_runner(), self.get_bank(bank_name).id)

    def mark_feedback_sent(self, item: OutboxItem, error: str | None = None) -> None:
        self._in_side_write(lambda conn: feedback_sql.mark(self._runner(conn), item, error))

    def feedback_outbox_health(self, bank_name: str) -> OutboxHealth:
        return feedback_sql.health(self._read_runner(), self.get_bank(bank_name).id)

    # ---- the flood guard (flood.py) ----------------------------------------------------------

    def set_flood_guard(self, bank_name: str, settings: FloodSettings) -> None:
        bank = self.get_bank(bank_name)
        settings.checked(bank.name)
        self._in_write(lambda conn: flood.set_settings(self._runner(conn), bank.id, settings))

    def flood_guard_settings(self) -> dict[str, FloodSettings]:
        return flood.settings(self._read_runner())

    def release_entry(self, entry_id: int, reason: str | None = None) -> Release:
        """One write; its result is a plain dict, which PostgreSQL's retry layer records (a
        re-run after a lost connection answers with the first try's release)."""
        def body(conn: Any) -> dict[str, Any]:
            revision = int(conn.execute(f"SELECT {self.dialect.revision_sql}").fetchone()[0])
            return asdict(flood.release(self._runner(conn), entry_id, revision, reason))

        return Release(**self._in_write(body))

    def flood_releases(self, since_revision: int = 0) -> list[Release]:
        return flood.releases_since(self._read_runner(), since_revision)

    # ---- web console sessions (console_sessions.py) ------------------------------------------

    def start_console_session(self, id_digest: str, expires_at: float) -> None:
        self._in_side_write(lambda conn: console_sessions.start(
            self._runner(conn), id_digest, expires_at))

    def console_session_active(self, id_digest: str) -> bool:
        return console_sessions.is_active(self._read_runner(), id_digest)

    def end_console_session(self, id_digest: str) -> bool:
        return self._in_side_write(lambda conn: console_sessions.end(
            self._runner(conn), id_digest))


class Replayable(Generic[T]):
    """An iterable read once from its source, and replayed from the start on a second pass."""

    def __init__(self, items: Iterable[T]) -> None:
        self._source = iter(items)
        self._seen: list[T] = []

    def __iter__(self) -> Iterator[T]:
        yield from self._seen
        for item in self._source:
            self._seen.append(item)
            yield item
