"""What an exchange-backed bank keeps in the store: its binding (which exchange, how to reach
it, where its credentials come from, the checkpoint it has synced to) and the pages of upstream
changes a sync applies.

Why here rather than beside the exchange clients: a page and its checkpoint must be written in
one store transaction (so a sync killed at any instant loses nothing and duplicates nothing),
so every store backend takes these types; the clients only produce them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.limits import check_name, quote

CREDENTIAL_SOURCES = ("env", "file")
# The binding config's key for how often the admin service syncs the bank on its own, in
# seconds (`indexer exchange bind --every`). Not the connector's: changing it keeps the
# checkpoint, where any other change to the config starts the sync again from the beginning.
SCHEDULE_KEY = "every"


@dataclass(frozen=True)
class Credentials:
    """Where a secret is, never the secret itself: `env` names an environment variable,
    `file` a path. Only the reference is stored; the secret is read when a sync needs it."""

    source: str  # "env" or "file"
    name: str

    def __post_init__(self) -> None:
        if self.source not in CREDENTIAL_SOURCES:
            raise HashsvcError(f"invalid credentials source {quote(self.source)}: must be "
                               f"{' or '.join(CREDENTIAL_SOURCES)}")
        if not self.name:
            raise HashsvcError(f"credentials from {self.source}: name it")

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "name": self.name})

    @staticmethod
    def from_json(text: str | None) -> Credentials | None:
        if not text:
            return None
        data = json.loads(text)
        return Credentials(source=data["source"], name=data["name"])


@dataclass(frozen=True)
class ExchangeBinding:
    bank: str
    exchange: str  # the connector's name, e.g. "file"
    config: dict[str, Any]
    credentials: Credentials | None
    checkpoint: str | None  # opaque to the store: the connector's cursor, as text
    bound_at: float
    synced_at: float | None  # when the last page was applied

    def sync_every(self, default: float) -> float:
        """Seconds between scheduled syncs of this bank: its own `--every`, else `default`
        (the server's); 0 means not on a schedule."""
        every = self.config.get(SCHEDULE_KEY)
        return default if every is None else float(every)

    def connector_config(self) -> dict[str, Any]:
        """The config without the schedule: what the exchange's client is built from."""
        return {k: v for k, v in self.config.items() if k != SCHEDULE_KEY}


@dataclass(frozen=True)
class UpstreamEntry:
    """One hash as an exchange lists it. `upstream_id` is the exchange's own id for it (what
    a later deletion or update names); `tags` its labels and opinions, kept as provenance."""

    upstream_id: str
    algorithm: str
    hash: bytes
    tags: tuple[str, ...] = ()
    external_id: str | None = None  # the entry's external id; default: the upstream id


@dataclass(frozen=True)
class ExchangePage:
    """One page of upstream changes and the checkpoint to store with it.

    `deletions` are upstream ids gone upstream. A connector whose source only lists what
    exists (a hash list) says instead which `listing` each page belongs to, and marks the last
    page of a listing with `ends_listing`: everything the bank got from the exchange that this
    listing did not contain is then deleted (mark and sweep, so a listing may take many pages
    and many syncs, and deletions wait until it has been read whole)."""

    upserts: Iterable[UpstreamEntry]
    checkpoint: str
    more: bool
    deletions: Sequence[str] = ()
    listing: str | None = None
    ends_listing: bool = False


@dataclass
class PageResult:
    added: int = 0
    updated: int = 0  # tags or hash changed upstream
    unchanged: int = 0
    deleted: int = 0

    def __iadd__(self, other: PageResult) -> PageResult:
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        return self


@dataclass(frozen=True)
class Provenance:
    """Where an entry came from: which exchange, under which id and tags, first and last seen."""

    entry_id: int
    exchange: str
    upstream_id: str
    tags: tuple[str, ...]
    first_seen: float
    last_seen: float


def provenance_by_entry(records: Iterable[Provenance]) -> dict[int, str]:
    """Entry id -> its provenance as one JSON text: how a snapshot row and the change feed
    carry it to the scanners, which never read the provenance table per match."""
    grouped: dict[int, list[list[Any]]] = {}
    for p in records:
        grouped.setdefault(p.entry_id, []).append(
            [p.exchange, p.upstream_id, list(p.tags), p.first_seen, p.last_seen])
    return {entry_id: json.dumps(items, separators=(",", ":"))
            for entry_id, items in grouped.items()}


def provenance_from_json(entry_id: int, text: str | None) -> tuple[Provenance, ...]:
    """What `provenance_by_entry` wrote for `entry_id` (none for None or empty text)."""
    if not text:
        return ()
    return tuple(Provenance(entry_id=entry_id, exchange=str(item[0]), upstream_id=str(item[1]),
                            tags=tuple(str(t) for t in item[2]), first_seen=float(item[3]),
                            last_seen=float(item[4])) for item in json.loads(text))


def check_exchange_name(name: str) -> str:
    return check_name(name, "exchange type")


DEFAULT_ALERT_AFTER = 86_400.0  # seconds without a successful sync before a bank alerts


@dataclass(frozen=True)
class SyncHealth:
    """How a bank's syncs have gone, as the store keeps it for whichever process reads it: the
    CLI that ran the sync writes it, the server exports it as metrics, `exchange status` shows
    it. Counts are since the bank was bound; `fetched` is upstream entries read (added,
    updated or unchanged), the others the entry changes applied."""

    bank: str
    exchange: str
    bound_at: float
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    errors: int
    fetched: int
    added: int
    updated: int
    deleted: int
    alert_after: float

    @property
    def failing(self) -> bool:
        """True while the latest sync attempt failed (its error is newer than any success)."""
        return self.last_error_at is not None and (
            self.last_success is None or self.last_error_at > self.last_success)

    def without_success(self, now: float) -> float:
        """Seconds since the last successful sync (since the binding until one has)."""
        return now - (self.last_success or self.bound_at)

    def stale(self, now: float) -> bool:
        """True when no sync has succeeded for `alert_after` seconds: the condition the
        HashsvcExchangeSyncStale alert watches."""
        return self.without_success(now) > self.alert_after
