"""The console's "Matches" page: the recent matches of this server's audit trail
(ListRecentMatches: ids and hashes, never an image), each with "Confirm" and "False positive"
buttons that give the verdict through ReportMatchFeedback with the signed-in key.

Why the verdict carries the upload's hash and request id: they are what the audit trail kept of
the upload, and the feedback record (and the exchange it may go to) needs nothing more. A false
positive disables the entry; the page then shows it disabled, with its first reason, and offers
no more buttons for it.
"""

from __future__ import annotations

import urllib.parse

from hashsvc_client.v1 import admin_pb2, types_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import PREFIX, Console
from hashsvc.http.console.exchanges import when
from hashsvc.http.console.numbers import INT64_MAX, whole_number
from hashsvc.http.gateway import GatewayError

PAGE = f"{PREFIX}/matches"
LIMIT = 100
ALGORITHMS = dict(types_pb2.Algorithm.items())
VERDICTS = {"confirmed": admin_pb2.FEEDBACK_VERDICT_CONFIRMED,
            "false_positive": admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE}


def routes(ctx: Console) -> list[BaseRoute]:
    async def render(request: Request, bank: str, *, status: int = 200,
                     error: GatewayError | None = None) -> Response:
        banks = await ctx.call(request, "admin", "ListBanks", admin_pb2.ListBanksRequest(),
                               admin_pb2.ListBanksResponse)
        assert isinstance(banks, admin_pb2.ListBanksResponse)
        values = {"title": "Matches", "bank": bank, "banks": [b.name for b in banks.banks],
                  "when": when, "describe": describe, "uploaded": uploaded}
        try:
            answer = await ctx.call(request, "admin", "ListRecentMatches",
                                    admin_pb2.ListRecentMatchesRequest(limit=LIMIT, bank=bank),
                                    admin_pb2.ListRecentMatchesResponse)
        except GatewayError as err:  # an unknown bank in the filter: said on the page
            return ctx.gateway_error(request, err, template="matches/list.html",
                                     matches=[], bounded=False, **values)
        assert isinstance(answer, admin_pb2.ListRecentMatchesResponse)
        values |= {"matches": list(answer.matches), "bounded": answer.scan_bounded}
        if error is not None:
            return ctx.gateway_error(request, error, template="matches/list.html", **values)
        return ctx.render(request, "matches/list.html", status=status, **values)

    async def page(request: Request) -> Response:
        return await render(request, request.query_params.get("bank", ""))

    async def feedback(request: Request) -> Response:
        form = await ctx.form(request)
        fields = {name: str(form.get(name) or "").strip() for name in (
            "entry_id", "verdict", "reason", "case_id", "upload_id", "scanned_hash", "bank")}
        message = admin_pb2.ReportMatchFeedbackRequest(
            verdict=VERDICTS.get(fields["verdict"], admin_pb2.FEEDBACK_VERDICT_UNSPECIFIED),
            reason=fields["reason"], case_id=fields["case_id"], upload_id=fields["upload_id"])
        entry_id = whole_number(fields["entry_id"], INT64_MAX)
        if entry_id is not None:
            message.entry_id = entry_id
        algorithm, _, hex_value = fields["scanned_hash"].partition(":")
        if algorithm and hex_value:
            message.scanned_hash.CopyFrom(types_pb2.Hash(
                algorithm=ALGORITHMS.get(f"ALGORITHM_{algorithm.upper()}",
                                         types_pb2.ALGORITHM_UNSPECIFIED), hex=hex_value))
        try:
            answer = await ctx.call(request, "admin", "ReportMatchFeedback", message,
                                    admin_pb2.ReportMatchFeedbackResponse)
        except GatewayError as err:  # no reason, an unknown entry: said on the page itself
            return await render(request, fields["bank"], error=err)
        assert isinstance(answer, admin_pb2.ReportMatchFeedbackResponse)
        back = f"{PAGE}?bank={urllib.parse.quote(fields['bank'])}" if fields["bank"] else PAGE
        if fields["verdict"] == "false_positive":
            state = ("it is now disabled" if answer.disabled_now
                     else "it was already disabled")
            return ctx.redirect(request, back, flash=(
                f"False positive recorded for entry {answer.entry_id}: {state} "
                f"({answer.disabled_reason})."))
        return ctx.redirect(request, back,
                            flash=f"Match confirmed for entry {answer.entry_id}.")

    return [Route("/matches", ctx.page(page), methods=["GET"]),
            Route("/matches/feedback", ctx.page(feedback), methods=["POST"])]


def describe(match: types_pb2.Match) -> str:
    """How a match matched, in words: algorithm, distance against threshold, and any transform,
    trimming or variant."""
    algorithm = types_pb2.Algorithm.Name(match.algorithm).removeprefix("ALGORITHM_").lower()
    parts = [f"{algorithm}, distance {match.distance} of {match.threshold}"]
    transform = types_pb2.Transform.Name(match.query_transform).removeprefix("TRANSFORM_")
    if transform not in ("IDENTITY", "UNSPECIFIED"):
        parts.append(f"upload {transform.lower().replace('_', ' ')}")
    if match.query_trimmed:
        parts.append("borders trimmed")
    if match.entry_variant:
        parts.append(f"entry variant {match.entry_variant}")
    return "; ".join(parts)


def uploaded(item: admin_pb2.RecentMatch) -> str:
    """The upload's hash that the match used, as "algorithm:hex" (what a verdict records)."""
    for value in item.hashes:
        if value.algorithm == item.match.algorithm:
            name = types_pb2.Algorithm.Name(value.algorithm).removeprefix("ALGORITHM_").lower()
            return f"{name}:{value.hex}"
    return ""
