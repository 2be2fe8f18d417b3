"""The ASGI application: the JSON API under /v1, and the console under /console where the
AdminService runs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hashsvc.config import ServerConfig
from hashsvc.http import console
from hashsvc.http.api import api_routes
from hashsvc.http.bodies import BodyLimits, Refused
from hashsvc.http.gateway import Gateway
from hashsvc.http.openapi import openapi_route
from hashsvc.http.problems import problem

log = logging.getLogger("hashsvc.http")
_BODY_OVERHEAD = 1 << 20  # room for a JSON request's other fields around an image's base64


class _GatewayHolder:
    """The gateway, made when the app starts (grpc.aio needs the serving loop)."""

    def __init__(self, target: str, max_message: int) -> None:
        self._target = target
        self._max_message = max_message
        self._gateway: Gateway | None = None

    def __call__(self) -> Gateway:
        assert self._gateway is not None, "the HTTP app has not started"
        return self._gateway

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._gateway = Gateway(self._target, max_message=self._max_message)
        try:
            yield
        finally:
            await self._gateway.close()


class _InFlightLimit:
    """At most `limit` HTTP requests in progress in this worker; the next gets 429 at once.

    Why: a request's body is read into memory before its gRPC call is admitted, so without a
    cap many slow uploads could each hold up to the body limit. Twice `max_concurrent_rpcs`:
    enough for the next bodies to arrive while admitted calls run. One event loop: no lock."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app, self._limit, self._in_flight = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._in_flight >= self._limit:
            refused = Refused(429, f"{self._limit} HTTP requests in progress (twice "
                              "max_concurrent_rpcs); retry with backoff", "busy")
            await refused.response(scope["path"])(scope, receive, send)
            return
        self._in_flight += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self._in_flight -= 1


def create_app(config: ServerConfig, grpc_target: str) -> Starlette:
    limits = BodyLimits(max_bytes=config.max_image_bytes + _BODY_OVERHEAD,
                        idle_seconds=config.client_idle_timeout)
    gateway = _GatewayHolder(grpc_target, limits.max_bytes)
    routes: list[BaseRoute] = [*api_routes(gateway, limits), openapi_route()]
    if config.role != "scan":
        routes.append(Mount("/console", routes=console.routes(config, gateway)))
        routes.append(Route("/", lambda _request: RedirectResponse("/console/"),
                            include_in_schema=False))
    return Starlette(routes=routes, lifespan=gateway.lifespan, exception_handlers={
        HTTPException: _http_error, Exception: _server_error},
        middleware=[Middleware(_InFlightLimit, limit=2 * config.max_concurrent_rpcs)])


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, a method the path does not have) as problem
    documents, counted like the API's other refusals; a 405 keeps its `Allow` header."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        response = Refused(404, f"no route {request.url.path}; the API is under /v1",
                           "not_found").response(request.url.path)
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        response = Refused(405, f"{request.method} is not allowed on {request.url.path}; "
                           f"allowed: {allowed}", "method").response(request.url.path)
        response.headers["Allow"] = allowed
    else:
        response = problem(grpc.StatusCode.INVALID_ARGUMENT, str(exc.detail),
                           status=exc.status_code, instance=request.url.path)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    """Logged with its trace here; the client gets a problem document and never the trace."""
    log.error("HTTP request failed", exc_info=exc, extra={"path": request.url.path})
    return problem(grpc.StatusCode.INTERNAL, "internal error; the server log has the details",
                   instance=request.url.path)
