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
