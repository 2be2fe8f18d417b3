"""Finding entries: the query every backend answers page by page, and its opaque page token.

Why keyset paging (entries after an id) rather than OFFSET: an export of millions of entries
reads each page at the cost of one index seek, and entries added or removed while an analyst
pages do not shift later pages (an OFFSET would skip or repeat rows). Why an opaque token:
clients must not build it, so a later version may add fields to it (an exchange cursor, a sort
order) without breaking them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from hashsvc.errors import HashsvcError
from hashsvc.limits import LIMITS, check_external_id, check_name, quote
from hashsvc.store.model import Entry

DEFAULT_PAGE_SIZE = 100
_TOKEN_PREFIX = "e1:"  # the token's version: a later format gets another prefix


@dataclass(frozen=True)
class EntryQuery:
    """Which entries to list; every filter given must hold (AND). Room for more filters
    (exchange, upstream id) is left on purpose: they are fields here and in the proto."""

    banks: Sequence[str] = ()  # empty: every bank
    external_id: str | None = None
    hash: tuple[str, bytes] | None = None  # (algorithm, value)
    disabled: bool | None = None  # None: both
    exchange: str | None = None  # only entries this exchange supplied (exchange_model)
    upstream_id: str | None = None  # only the entry an exchange lists under this id
    after_id: int = 0  # from the page token
    limit: int = DEFAULT_PAGE_SIZE

    def checked(self) -> EntryQuery:
        """The query, or a `HashsvcError` naming what is wrong with it."""
        for bank in self.banks:
            check_name(bank)
        if self.external_id is not None:
            check_external_id(self.external_id)
        if not 1 <= self.limit <= LIMITS.page_entries:
            raise HashsvcError(f"page size {self.limit} is out of range 1..{LIMITS.page_entries}")
        if self.exchange is not None:
            check_name(self.exchange, "exchange type")
        if self.upstream_id is not None:
            check_external_id(self.upstream_id)
        if self.after_id < 0:
            raise HashsvcError("invalid page token")
        return self


@dataclass(frozen=True)
class EntryPage:
    entries: list[Entry]
    next_after_id: int  # 0: this was the last page


def query_sql(query: EntryQuery, mark: str) -> tuple[str, tuple[object, ...]]:
    """The WHERE, ORDER and LIMIT clauses of `query` over `entries e JOIN banks b`, with the
    driver's placeholder `mark`; one row more than a page is asked for, to know if more exist."""
    clauses = ["e.id > ?"]
    args: list[object] = [query.after_id]
    if query.banks:
        clauses.append(f"b.name IN ({', '.join('?' * len(query.banks))})")
        args.extend(query.banks)
    if query.external_id is not None:
        clauses.append("e.external_id = ?")
        args.append(query.external_id)
    if query.hash is not None:
        clauses.append("e.algorithm = ? AND e.hash = ?")
        args.extend(query.hash)
    if query.disabled is not None:
        clauses.append("e.disabled = ?")
        args.append(query.disabled if mark == "%s" else int(query.disabled))
    for column, value in (("exchange", query.exchange), ("upstream_id", query.upstream_id)):
        if value is not None:
            clauses.append("EXISTS (SELECT 1 FROM entry_provenance p WHERE p.entry_id = e.id"
                           f" AND p.bank_id = e.bank_id AND p.{column} = ?)")
            args.append(value)
    sql = f"WHERE {' AND '.join(clauses)} ORDER BY e.id LIMIT {query.limit + 1}"
    return sql.replace("?", mark), tuple(args)


def page_of(query: EntryQuery, rows: list[Entry]) -> EntryPage:
    """The page from the (limit + 1) rows `query_sql` selected."""
    if len(rows) > query.limit:
        return EntryPage(rows[: query.limit], rows[query.limit - 1].id)
    return EntryPage(rows, 0)


def encode_page_token(after_id: int) -> str:
    if after_id <= 0:
        return ""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{after_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The entry id a page token continues after (0 for no token), or a clear error."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        if text.startswith(_TOKEN_PREFIX) and text[len(_TOKEN_PREFIX):].isdigit():
            return int(text[len(_TOKEN_PREFIX):])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise HashsvcError(f"invalid page token {quote(token)}: pass back the next_page_token of "
                       "the previous page unchanged")
