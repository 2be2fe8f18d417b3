"""The console's "Exchanges" page: each exchange-bound bank's syncs (ListExchangeBindings) and
a "Sync now" button (SyncExchange), all through the gateway with the signed-in key.

Why the button waits for the outcome (a bounded 20 s, SyncExchange's own bound) and then
redirects: the analyst sees what the sync did in the flash message, and a reload of the page
never posts the sync again (post/redirect/get). A sync that outlasts the wait goes on in the
server; the page says so, and the bank's row shows it running until it ends.
"""

from __future__ import annotations

import datetime as dt

from hashsvc_client.v1 import admin_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import PREFIX, Console
from hashsvc.http.gateway import GatewayError

SYNC_WAIT_SECONDS = 20.0
PAGE = f"{PREFIX}/exchanges"


def routes(ctx: Console) -> list[BaseRoute]:
    async def bindings(request: Request) -> list[admin_pb2.ExchangeBindingStatus]:
        answer = await ctx.call(request, "admin", "ListExchangeBindings",
                                admin_pb2.ListExchangeBindingsRequest(),
                                admin_pb2.ListExchangeBindingsResponse)
        assert isinstance(answer, admin_pb2.ListExchangeBindingsResponse)
        return list(answer.bindings)

    async def page(request: Request) -> Response:
        return ctx.render(request, "exchanges/list.html", title="Exchanges",
                          bindings=await bindings(request), when=when)

    async def sync(request: Request) -> Response:
        bank = request.path_params["bank"]
        try:
            answer = await ctx.call(
                request, "admin", "SyncExchange",
                admin_pb2.SyncExchangeRequest(bank=bank, wait_seconds=SYNC_WAIT_SECONDS),
                admin_pb2.SyncExchangeResponse)
        except GatewayError as err:  # busy, unbound, not this key's: said on the page itself
            return ctx.gateway_error(request, err, template="exchanges/list.html",
                                     title="Exchanges", bindings=await bindings(request),
                                     when=when)
        assert isinstance(answer, admin_pb2.SyncExchangeResponse)
        message, kind = outcome(answer)
        return ctx.redirect(request, PAGE, flash=message, kind=kind)

    return [Route("/exchanges", ctx.page(page), methods=["GET"]),
            Route("/exchanges/{bank}/sync", ctx.page(sync), methods=["POST"])]


def outcome(answer: admin_pb2.SyncExchangeResponse) -> tuple[str, str]:
    """The flash message for a sync now, and its kind ("ok" or "error")."""
    run = answer.run
    if not answer.finished:
        return (f"The sync of {answer.bank} is still running after {SYNC_WAIT_SECONDS:g} s; "
                "it goes on in the server: reload this page for its outcome.", "ok")
    if run.outcome == "failed":
        return f"The sync of {answer.bank} failed: {run.error}", "error"
    counts = run.counts
    return (f"Synced {answer.bank} from {answer.exchange}: {run.pages} page(s), "
            f"{counts.added} added, {counts.updated} updated, {counts.deleted} deleted, "
            f"{counts.unchanged} unchanged.", "ok")


def when(stamp: float) -> str:
    """A Unix time for the page, in UTC to the second; "never" for 0."""
    if not stamp:
        return "never"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
