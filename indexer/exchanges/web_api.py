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
