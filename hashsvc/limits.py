"""The one table of limits on what may be put into the store, and the checks that apply it.

Why one module: banks and entries arrive by several paths (`indexer import`, the other `indexer`
verbs, the gRPC AdminService), and a limit enforced on one path only is no limit: the CLI capped
external ids at 512 characters while AddEntries took 10 MB ones. Every path calls these checks.

Why these values: every match sends its entry's external id and metadata back to the scanning
client, so one entry must stay far below gRPC's default 4 MB receive limit, and its metadata must
become a protobuf `Struct`: numbers are float64, text is UTF-8, and each JSON level costs three
nested messages against protobuf's decode depth of 100 (a `ScanResult` already spends a few).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hashsvc.errors import HashsvcError


@dataclass(frozen=True)
class InputLimits:
    external_id_chars: int = 512
    metadata_bytes: int = 16_384  # as compact UTF-8 JSON
    metadata_depth: int = 16  # the metadata object itself is level 1
    name_chars: int = 64  # bank names and tags; the pattern is `NAME_PATTERN`
    description_chars: int = 1_024
    tags: int = 32
    reason_chars: int = 1_024  # why entries were disabled
    quoted_chars: int = 64  # of any user input quoted back in an error message
    logged_chars: int = 200  # of free text (a disable reason) written to the server log
    request_id_chars: int = 128  # a scan's request/item id, echoed back and written to the audit
    page_entries: int = 1_000  # entries per ListEntries page: with metadata, far below 4 MB
    recent_matches: int = 500  # per ListRecentMatches call (each read back from the audit)
    sync_wait_seconds: int = 60  # SyncExchange's wait for the outcome: the sync goes on


LIMITS = InputLimits()
NAME_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{LIMITS.name_chars - 1}}}$")
# Integers beyond this are not exact as float64, the only number a protobuf Struct holds.
_MAX_EXACT_INT = 2**53


def quote(text: str) -> str:
    """`text` for an error message: at most `quoted_chars` of it, as an ASCII-only literal.

    ASCII because a gRPC status message travels percent-encoded in a header, where every
    non-ASCII byte costs three; bounded because a 1 MB name echoed back overflowed that header
    (the client saw RESOURCE_EXHAUSTED instead of the INVALID_ARGUMENT meant for it)."""
    if len(text) <= LIMITS.quoted_chars:
        return ascii(text)
    return f"{text[:LIMITS.quoted_chars]!a}... ({len(text):,} characters)"


def loggable(text: str) -> str:
    """Free text for the server log: bounded, with control and unpaired characters escaped so a
    value cannot forge log lines or break a terminal."""
    cut = text[:LIMITS.logged_chars]
    clean = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in cut)
    return clean + ("..." if len(text) > len(cut) else "")


def check_request_id(value: str, what: str) -> str:
    """A caller's id for a scan: it is echoed in the response and written to the audit log, so
    it is bounded like every other input (a 10 MB id once went into both)."""
    if len(value) > LIMITS.request_id_chars:
        raise HashsvcError(f"{what} {quote(value)} is over the limit of "
                           f"{LIMITS.request_id_chars} characters")
    return value


def check_text(value: str, what: str, max_chars: int) -> str:
    """Free text a person typed (a description, a reason): bounded and valid Unicode."""
    if len(value) > max_chars:
        raise HashsvcError(f"{what} is {len(value):,} characters, over the limit of {max_chars:,}")
    if not _is_unicode(value):
        raise HashsvcError(f"{what} {quote(value)} is not valid Unicode (an unpaired surrogate)")
    return value


def check_name(name: str, what: str = "bank name") -> str:
    if not NAME_PATTERN.match(name):
        raise HashsvcError(
            f"invalid {what} {quote(name)}: use 1–{LIMITS.name_chars} letters, digits, '_', '.',"
            " ':' or '-', starting with a letter or digit"
        )
    return name


def check_tags(tags: Iterable[str]) -> list[str]:
    """Distinct, valid tags, sorted."""
    unique = sorted({check_name(tag, "tag") for tag in tags})
    if len(unique) > LIMITS.tags:
        raise HashsvcError(f"{len(unique)} tags, over the limit of {LIMITS.tags}")
    return unique


def check_external_id(value: str | None) -> str | None:
    """An entry's external id, stripped; None if empty."""
    if value is None or not (value := value.strip()):
        return None
    return check_text(value, "external id", LIMITS.external_id_chars)


def check_metadata(value: Any) -> dict[str, Any] | None:
    """An entry's metadata, if it can be stored and sent back with every match; else an error
    saying what is wrong with it. Empty metadata is None."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise HashsvcError("metadata must be a JSON object")
    _check_tree(value)
    # The tree is now shallow and holds only JSON values, so this cannot recurse too deep.
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > LIMITS.metadata_bytes:
        raise HashsvcError(
            f"metadata is {size:,} bytes as JSON, over the limit of {LIMITS.metadata_bytes:,}")
    return value


def _check_tree(root: dict[str, Any]) -> None:
    """Depth, key and value types, numbers and text of a metadata tree, without recursion (a
    hostile tree may be deeper than Python's stack)."""
    pending: list[tuple[Any, int]] = [(root, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list) and depth > LIMITS.metadata_depth:
            raise HashsvcError(
                f"metadata is nested deeper than {LIMITS.metadata_depth} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise HashsvcError(f"metadata keys must be strings, not {quote(repr(key))}")
                if not _is_unicode(key):
                    raise HashsvcError(
                        f"metadata key {quote(key)} is not valid Unicode (an unpaired surrogate)")
                pending.append((child, depth + 1))
        elif isinstance(node, list):
            pending.extend((child, depth + 1) for child in node)
        else:
            _check_scalar(node)


def _check_scalar(value: Any) -> None:
    if isinstance(value, str):
        if not _is_unicode(value):
            raise HashsvcError(
                f"metadata value {quote(value)} is not valid Unicode (an unpaired surrogate)")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            raise HashsvcError(
                f"metadata number {quote(_digits(value))} is not exact as a float64 (beyond "
                "±2^53): write it as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise HashsvcError(f"metadata number {value} is not finite")
    else:
        raise HashsvcError(f"metadata value of type {type(value).__name__} is not JSON")


def representable(value: Any, depth: int = 1) -> Any:
    """`value` made fit for a protobuf Struct whatever it holds: what cannot be sent exactly
    (a huge integer, an unpaired surrogate, a level too deep) becomes a string. For metadata
    stored before `check_metadata` existed, so that such an entry is still reported."""
    if isinstance(value, dict | list) and depth > LIMITS.metadata_depth:
        return "(nested too deep)"
    if isinstance(value, dict):
        return {_escaped(str(k)): representable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [representable(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) <= _MAX_EXACT_INT else _digits(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return _escaped(value if isinstance(value, str) else repr(value))


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    return text if _is_unicode(text) else text.encode("utf-8", "backslashreplace").decode()


def _digits(value: int) -> str:
    try:
        return str(value)
    except ValueError:  # over Python's int-to-str digit limit
        return f"(an integer of about {int(value.bit_length() * math.log10(2)):,} digits)"
