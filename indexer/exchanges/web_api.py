"""What the connectors over python-threatexchange's web clients (`stopncii`, `tat`) share:
the checks on a binding's config, upstream labels made into tags, and errors that say what
failed without quoting a credential.

Why a module of its own: each connector is about its exchange's paging and records; these
rules are the same for all of them and must not drift apart (a base URL that would send
credentials over plain HTTP to another host is refused by every one).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection, Iterable
from typing import Any

from urllib3.util.retry import Retry

from hashsvc.errors import HashsvcError
from hashsvc.limits import LIMITS

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_NOT_TAG = re.compile(r"[^A-Za-z0-9_.:-]+")


def check_config(exchange: str, config: dict[str, Any], allowed: Collection[str]) -> None:
    """Refuse settings the exchange does not take (an NCMEC `environment` on a StopNCII
    binding would otherwise be stored and silently ignored)."""
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        takes = ", ".join(sorted(allowed)) or "nothing"
        raise HashsvcError(f"the {exchange} exchange does not take {', '.join(unknown)} "
                           f"(it takes: {takes})")


def checked_base_url(exchange: str, value: object) -> str:
    """Another address for the exchange's API (a stand-in for tests): https://, or plain
    http:// only on loopback, so credentials never cross a network in the clear."""
    if value is None:
        return ""
    url = urllib.parse.urlsplit(str(value))
    if url.scheme != "https" and not (url.scheme == "http" and url.hostname in LOOPBACK):
        raise HashsvcError(f"{exchange} base_url {value!r} must be https:// (plain http only "
                           "on loopback)")
    if url.password is not None:
        raise HashsvcError(f"{exchange} base_url must not hold a password: use the credentials")
    return str(value).rstrip("/")


def upstream_tags(labels: Iterable[str]) -> tuple[str, ...]:
    """Upstream labels as valid tags (other characters become '-'), distinct, at most the
    store's tag limit, in the order given (so the first labels, the most telling, are kept)."""
    tags: list[str] = []
    for label in labels:
        tag = _NOT_TAG.sub("-", label).lstrip("-_.:")[: LIMITS.name_chars]
        if tag and tag not in tags:
            tags.append(tag)
    return tuple(tags[: LIMITS.tags])


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def fetch_failed(exchange: str, err: BaseException) -> HashsvcError:
    """A failed fetch, as the sync reports it. The clients' errors name the URL and status,
    never the keys (those travel in headers and form bodies)."""
    return HashsvcError(f"{exchange} exchange: fetch failed ({first_line(err)}); nothing "
                        "applied, the next sync resumes")


# The longest Retry-After a sync waits out. urllib3 honours up to 6 hours a wait, and a sync
# holds the single-writer lock (which publishing needs) all the while: a confused or hostile
# server must not stop publishing for hours. Past this, the retry comes sooner and, if still
# refused, the sync fails and resumes from its checkpoint next time.
MAX_RETRY_AFTER_S = 60.0


class _CappedRetry(Retry):
    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER_S)


def cap_retry_after(session: Any) -> Any:
    """`session` (a requests.Session a client made) with every adapter's retries waiting at
    most MAX_RETRY_AFTER_S for a Retry-After. The clients build their Retry inside their
    session factories, so the policy is changed on the object they made: its class becomes
    the capped one (same fields, one method different), nothing else of theirs changes."""
    for adapter in session.adapters.values():
        retry = getattr(adapter, "max_retries", None)
        if isinstance(retry, Retry) and not isinstance(retry, _CappedRetry):
            retry.__class__ = _CappedRetry
    return session
