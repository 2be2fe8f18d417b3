"""The console's "Entries" page: search by external id, hash, exchange (upstream) id or entry id
(ListEntries filters, GetEntry); one entry with its provenance and feedback; disable or enable
it with a reason (SetEntriesDisabled); export a search's every entry as a download.

Exports come in two shapes: `csv`, every field of each entry, and `import`, the CSV that
`indexer import` and the Banks page read back (hash, algorithm, external_id, metadata), so a
search can be moved to another bank or server as it is.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from hashsvc_client.v1 import admin_pb2, types_pb2
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import PREFIX, Console, describe
from hashsvc.http.console.hashlist_upload import ALGORITHMS
from hashsvc.http.console.numbers import INT64_MAX, whole_number
from hashsvc.http.gateway import GatewayError
from hashsvc.server.convert import ALGORITHM_TO_PROTO, PROTO_TO_ALGORITHM

SEARCH_BY = {"external_id": "External id", "hash": "Hash", "upstream_id": "Exchange id",
             "id": "Entry id"}
STATES = {"any": None, "enabled": False, "disabled": True}
PAGE_SIZE = 50
EXPORT_PAGE_SIZE = 1000
EXPORTS = ("csv", "import")
_CSV_COLUMNS = ("id", "bank", "algorithm", "hash", "external_id", "disabled", "disabled_reason",
                "added_at", "variant", "metadata")
_IMPORT_COLUMNS = ("hash", "algorithm", "external_id", "metadata")


class SearchError(Exception):
    """A search the analyst filled in wrongly: shown on the page, with 422."""


def routes(ctx: Console) -> list[BaseRoute]:
    async def search(request: Request) -> Response:
        params = dict(request.query_params)
        values: dict[str, Any] = {"title": "Entries", "params": params, "search_by": SEARCH_BY,
                                  "states": STATES, "algorithms": ALGORITHMS,
                                  "entries": [], "searched": bool(params.get("q")),
                                  "export_query": "", "next_page": ""}
        try:
            values["banks"] = await _bank_names(ctx, request)
            if params.get("by") == "id" and params.get("q"):
                return await _by_id(ctx, request, params["q"])
            if values["searched"] or params.get("bank") or params.get("exchange"):
                query = _query(params)
                query.page_size = PAGE_SIZE
                answer = await ctx.call(request, "admin", "ListEntries", query,
                                        admin_pb2.ListEntriesResponse)
                values["entries"] = [_row(e) for e in answer.entries]  # type: ignore[attr-defined]
                values["searched"] = True
                token = answer.next_page_token  # type: ignore[attr-defined]
                values["export_query"] = urllib.parse.urlencode(
                    {k: v for k, v in params.items() if k != "page_token"})
                if token:
                    values["next_page"] = urllib.parse.urlencode({**params, "page_token": token})
        except SearchError as err:
            return ctx.render(request, "entries/search.html", status=422, error=str(err),
                              **values)
        except GatewayError as err:
            status, message = describe(err)
            if status >= 500 or status == 401:
                raise
            return ctx.render(request, "entries/search.html", status=status, error=message,
                              **values)
        return ctx.render(request, "entries/search.html", **values)

    async def show(request: Request, *, status: int = 200, error: str = "") -> Response:
        entry_id = _entry_id(request.path_params["entry_id"])
        if entry_id is None:
            return _no_entry(ctx, request)
        answer = await ctx.call(request, "admin", "GetEntry",
                                admin_pb2.GetEntryRequest(id=entry_id),
                                admin_pb2.GetEntryResponse)
        entry: admin_pb2.Entry = answer.entry  # type: ignore[attr-defined]
        return ctx.render(request, "entries/entry.html", status=status, error=error,
                          title=f"Entry {entry.id}", entry=_row(entry),
                          provenance=[_provenance(p) for p in entry.provenance],
                          feedback=[_feedback(f) for f in entry.feedback])

    async def set_disabled(request: Request) -> Response:
        entry_id = _entry_id(request.path_params["entry_id"])
        if entry_id is None:
            return _no_entry(ctx, request)
        form = await ctx.form(request)
        if form.get("disabled") not in ("true", "false"):  # a crafted post: change nothing
            return await show(request, status=422, error="Say whether to disable the entry: "
                              "disabled=true or disabled=false.")
        disabled = form.get("disabled") == "true"
        reason = str(form.get("reason") or "").strip()
        if disabled and not reason:
            return await show(request, status=422,
                              error="Give a reason for disabling the entry (kept with it).")
        entry = (await ctx.call(request, "admin", "GetEntry",
                                admin_pb2.GetEntryRequest(id=entry_id),
                                admin_pb2.GetEntryResponse)).entry  # type: ignore[attr-defined]
        change = admin_pb2.SetEntriesDisabledRequest(
            bank=entry.bank, selector=admin_pb2.EntrySelector(ids=[entry_id]),
            disabled=disabled, reason=reason)
        try:
            await ctx.stream(request, "admin", "SetEntriesDisabled", [change],
                             admin_pb2.SetEntriesDisabledResponse)
        except GatewayError as err:
            status, message = describe(err)
            return await show(request, status=status, error=message)
        return ctx.redirect(request, f"{PREFIX}/entries/{entry_id}",
                            flash=f"Entry {entry_id} {'disabled' if disabled else 'enabled'}.")

    async def export(request: Request) -> Response:
        params = dict(request.query_params)
        shape = params.get("format", "csv")
        if shape not in EXPORTS:
            return ctx.render(request, "error.html", status=422, title="Cannot export",
                              error=f"Unknown export format: one of {', '.join(EXPORTS)}.")
        try:
            query = _query(params)
        except SearchError as err:
            return ctx.render(request, "error.html", status=422, title="Cannot export",
                              error=str(err), back=f"{PREFIX}/entries")
        query.page_size = EXPORT_PAGE_SIZE
        query.page_token = ""
        # The first page is fetched before the answer starts, so a refused search is a page
        # with its status rather than a broken download.
        first = await ctx.call(request, "admin", "ListEntries", query,
                               admin_pb2.ListEntriesResponse)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        filename = f"entries-{stamp}{'-import' if shape == 'import' else ''}.csv"
        return StreamingResponse(
            _export_rows(ctx, request, query, first, shape), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return [
        Route("/entries", ctx.page(search), methods=["GET"]),
        Route("/entries/export", ctx.page(export), methods=["GET"]),
        Route("/entries/{entry_id}", ctx.page(show), methods=["GET"]),
        Route("/entries/{entry_id}/disabled", ctx.page(set_disabled), methods=["POST"]),
    ]


async def _by_id(ctx: Console, request: Request, text: str) -> Response:
    try:
        entry_id = int(text.strip())
    except ValueError:
        raise SearchError(f"An entry id is a number, not {text[:20]!r}.") from None
    return ctx.redirect(request, f"{PREFIX}/entries/{entry_id}")


async def _bank_names(ctx: Console, request: Request) -> list[str]:
    answer = await ctx.call(request, "admin", "ListBanks", admin_pb2.ListBanksRequest(),
                            admin_pb2.ListBanksResponse)
    return [bank.name for bank in answer.banks]  # type: ignore[attr-defined]


def _query(params: dict[str, str]) -> admin_pb2.ListEntriesRequest:
    """The ListEntries request for a search form's fields."""
    query = admin_pb2.ListEntriesRequest(page_token=params.get("page_token", ""))
    if params.get("bank"):
        query.banks.append(params["bank"])
    state = params.get("state", "any")
    if state not in STATES:
        raise SearchError(f"Unknown state {state[:20]!r}.")
    if STATES[state] is not None:
        query.disabled = bool(STATES[state])
    if params.get("exchange", "").strip():
        query.exchange = params["exchange"].strip()
    text = params.get("q", "").strip()
    by = params.get("by", "external_id")
    if by not in SEARCH_BY:
        raise SearchError(f"Cannot search by {by[:20]!r}.")
    if not text:
        return query
    if by == "external_id":
        query.external_id = text
    elif by == "upstream_id":
        query.upstream_id = text
    elif by == "hash":
        algorithm = params.get("algorithm", "pdq")
        if algorithm not in ALGORITHM_TO_PROTO:
            raise SearchError(f"Choose the hash's algorithm (one of {', '.join(ALGORITHMS)}).")
        query.hash.CopyFrom(types_pb2.Hash(algorithm=ALGORITHM_TO_PROTO[algorithm], hex=text))
    return query


def _entry_id(text: str) -> int | None:
    return whole_number(text, INT64_MAX)


def _no_entry(ctx: Console, request: Request) -> Response:
    text = request.path_params["entry_id"]
    return ctx.render(request, "error.html", status=404, title="No such entry",
                      error=f"There is no entry with id {text[:30]!r}: an entry id is a number.",
                      back=f"{PREFIX}/entries")


def _row(entry: admin_pb2.Entry) -> dict[str, Any]:
    metadata = json_format.MessageToDict(entry.metadata) if entry.HasField("metadata") else {}
    return {
        "id": entry.id, "bank": entry.bank, "path": f"{PREFIX}/entries/{entry.id}",
        "algorithm": PROTO_TO_ALGORITHM.get(entry.hash.algorithm, "?"), "hash": entry.hash.hex,
        "external_id": entry.external_id, "disabled": entry.disabled,
        "disabled_reason": entry.disabled_reason, "variant": entry.variant,
        "added_at": _time(entry.added_at), "added_at_raw": entry.added_at,
        "metadata": json.dumps(metadata, sort_keys=True) if metadata else "",
    }


def _provenance(item: types_pb2.EntryProvenance) -> dict[str, Any]:
    return {"exchange": item.exchange, "upstream_id": item.upstream_id, "tags": list(item.tags),
            "first_seen": _time(item.first_seen), "last_seen": _time(item.last_seen)}


def _feedback(item: admin_pb2.EntryFeedback) -> dict[str, Any]:
    verdict = admin_pb2.FeedbackVerdict.Name(item.verdict).removeprefix("FEEDBACK_VERDICT_")
    return {"verdict": verdict.replace("_", " ").lower(), "reason": item.reason,
            "case_id": item.case_id, "given_by": item.given_by, "given_at": _time(item.given_at),
            "upstream": item.upstream or "-"}


def _time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)) if seconds else ""


async def _export_rows(ctx: Console, request: Request, query: admin_pb2.ListEntriesRequest,
                       page: Any, shape: str) -> AsyncIterator[str]:
    columns = _IMPORT_COLUMNS if shape == "import" else _CSV_COLUMNS
    yield _csv_line(columns)
    while True:
        for entry in page.entries:
            if shape == "import" and entry.variant:
                continue  # a strategy's derived hash: the bank makes it again from its image
            row = _row(entry)
            row["added_at"] = f"{row['added_at_raw']:.3f}"
            row["disabled"] = "true" if row["disabled"] else "false"
            cells = tuple(str(row[c]) for c in columns)
            yield _csv_line(cells if shape == "import" else tuple(map(_inert, cells)))
        if not page.next_page_token:
            return
        query.page_token = page.next_page_token
        page = await ctx.call(request, "admin", "ListEntries", query,
                              admin_pb2.ListEntriesResponse)


def _inert(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs: external ids and reasons come from
    exchanges and other people, and "=HYPERLINK(...)" opened in a spreadsheet would be a
    formula (OWASP "CSV injection"). The import format is for `indexer import`, and is exact."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _csv_line(values: tuple[str, ...]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()
