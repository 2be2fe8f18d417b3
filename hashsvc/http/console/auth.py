"""Signing in and out of the console.

Sign-in exchanges an admin API key for a session: the key is checked by a real ListBanks call
(so a scan-only key is refused by the same role check as over gRPC), then sealed into the
session cookie (sessions.py) and the session's row is written to the store. Sign-out deletes the
row, so the cookie (and every copy of it, and every CSRF token of that session) stops working on
every worker and every admin server sharing the store, at once.
"""

from __future__ import annotations

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import (
    PRE_SESSION_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    Console,
    session_of,
)
from hashsvc.http.gateway import GatewayError

MAX_KEY_CHARS = 256


def routes(ctx: Console) -> list[BaseRoute]:
    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/banks", status_code=303)

    async def signin_form(request: Request) -> Response:
        try:
            if await ctx.session_of_cookie(request) is not None:
                return RedirectResponse(f"{PREFIX}/banks", status_code=303)
        except GatewayError as err:
            return ctx.gateway_error(request, err, template="auth/signin.html")
        return ctx.render(request, "auth/signin.html")

    async def signin(request: Request) -> Response:
        refusal = await ctx.refuse_post(request, request.cookies.get(PRE_SESSION_COOKIE) or "-")
        if refusal is not None:
            return refusal
        key = (await ctx.form(request)).get("key")
        key = key.strip() if isinstance(key, str) else ""
        if not key:
            return ctx.render(request, "auth/signin.html", status=400,
                              error="Enter an admin API key.")
        if len(key) > MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):  # no key is
            return ctx.render(request, "auth/signin.html", status=401,
                              error="This key is not known to the server.")
        denied = await ctx.check_key(key)
        if denied is not None:
            if denied.code == grpc.StatusCode.PERMISSION_DENIED:
                return ctx.render(request, "auth/signin.html", status=403,
                                  error="This key may not administer banks: the console needs "
                                        "a key with the admin role.")
            if denied.code == grpc.StatusCode.UNAUTHENTICATED:
                return ctx.render(request, "auth/signin.html", status=401,
                                  error="This key is not known to the server.")
            return ctx.gateway_error(request, denied, template="auth/signin.html")
        session = ctx.sealer.new_session(key, ctx.session_ttl)
        try:
            await ctx.store_call(lambda store: store.start_console_session(
                session.digest, session.expires_at))
        except GatewayError as err:
            return ctx.gateway_error(request, err, template="auth/signin.html")
        response = ctx.redirect(request, f"{PREFIX}/banks", flash="Signed in.")
        ctx.set_session_cookie(request, response, session)
        return response

    async def signout(request: Request) -> Response:
        session = session_of(request)
        await ctx.store_call(lambda store: store.end_console_session(session.digest))
        request.state.session = None
        response = ctx.redirect(request, f"{PREFIX}/signin", flash="Signed out.")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    return [
        Route("/", home, methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", ctx.page(signout), methods=["POST"]),
    ]
