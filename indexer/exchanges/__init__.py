"""Exchanges: upstream sources of hashes a bank is bound to and synced from.

Why one small interface of ours: each exchange (a hash list at a path or URL today; NCMEC,
StopNCII, ThreatExchange through python-threatexchange later) pages through its changes in its
own way. The sync (`sync.py`) needs only this: from a checkpoint, the next page of additions,
updates and deletions, and the checkpoint after it. Which page the store has applied is the
store's to keep (`Store.apply_exchange_page` writes both in one transaction).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hashsvc.errors import HashsvcError
from hashsvc.store.exchange_model import Credentials, ExchangeBinding, ExchangePage


class Exchange(Protocol):
    def fetch(self, checkpoint: str | None) -> ExchangePage:
        """The page after `checkpoint` (None: from the beginning). Raise a `HashsvcError`
        naming what went wrong rather than return a partial page."""
        ...


class FeedbackTaker(Protocol):
    """An exchange that takes opinions on its hashes (NCMEC's upvotes and downvotes,
    StopNCII's feedback, ThreatExchange's reactions). The feedback outbox (`sync.py`) calls it
    once per verdict and upstream id, and never again once it has returned."""

    def send_feedback(self, upstream_id: str, verdict: str, reason: str) -> None:
        """Send `verdict` ("confirmed" or "false_positive", with the analyst's `reason`) on
        the hash the exchange lists as `upstream_id`. Raise a `HashsvcError` naming what
        failed (never a credential): the verdict stays queued and the next sync retries."""
        ...


Factory = Callable[[dict[str, Any], Credentials | None], Exchange]


def _file_list(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
    from indexer.exchanges.file_list import FileListExchange

    return FileListExchange(config, credentials)


def _ncmec(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
    from indexer.exchanges.ncmec import NCMECExchange

    return NCMECExchange(config, credentials)


def _fb_threatexchange(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
    from indexer.exchanges.threatexchange import ThreatExchangeExchange

    return ThreatExchangeExchange(config, credentials)


def _stopncii(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
    from indexer.exchanges.stopncii import StopNCIIExchange

    return StopNCIIExchange(config, credentials)


def _tat(config: dict[str, Any], credentials: Credentials | None) -> Exchange:
    from indexer.exchanges.tat import TATExchange

    return TATExchange(config, credentials)


# exchange type -> what builds its client from a binding's config and credentials reference
EXCHANGES: dict[str, Factory] = {
    "file": _file_list, "url": _file_list, "ncmec": _ncmec,
    "fb_threatexchange": _fb_threatexchange, "stopncii": _stopncii, "tat": _tat,
}


def open_exchange(binding: ExchangeBinding) -> Exchange:
    factory = EXCHANGES.get(binding.exchange)
    if factory is None:
        raise HashsvcError(f"bank {binding.bank!r} is bound to exchange {binding.exchange!r}, "
                           f"which this hashsvc does not have (known: {', '.join(EXCHANGES)})")
    return factory(binding.connector_config(), binding.credentials)


def read_secret(credentials: Credentials) -> str:
    """The secret `credentials` points at, read now and never kept: from the environment
    variable or the file it names. The error names where it looked, never a value."""
    if credentials.source == "env":
        value = os.environ.get(credentials.name)
        if not value:
            raise HashsvcError(f"credentials: environment variable ${credentials.name} is "
                               "not set")
        return value.strip()
    try:
        return Path(credentials.name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise HashsvcError(f"credentials: cannot read {credentials.name}: "
                           f"{getattr(err, 'strerror', None) or err}") from None
