"""The ASGI application: the JSON API under /v1, and the console under /console where the
AdminService runs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from hashsvc.config import ServerConfig
from hashsvc.http import console
from hashsvc.http.api import api_routes
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


def create_app(config: ServerConfig, grpc_target: str) -> Starlette:
    max_body = config.max_image_bytes + _BODY_OVERHEAD
    gateway = _GatewayHolder(grpc_target, max_body)
    routes: list[BaseRoute] = [*api_routes(gateway, max_body), openapi_route()]
    if config.role != "scan":
        routes.append(Mount("/console", routes=console.routes(config, gateway)))
        routes.append(Route("/", lambda _request: RedirectResponse("/console/"),
                            include_in_schema=False))
    return Starlette(routes=routes, lifespan=gateway.lifespan, exception_handlers={
        HTTPException: _http_error, Exception: _server_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
        exc.status_code, grpc.StatusCode.INVALID_ARGUMENT)
    return problem(code, str(exc.detail), status=exc.status_code, instance=request.url.path)


async def _server_error(request: Request, exc: Exception) -> Response:
    """Logged with its trace here; the client gets a problem document and never the trace."""
    log.error("HTTP request failed", exc_info=exc, extra={"path": request.url.path})
    return problem(grpc.StatusCode.INTERNAL, "internal error; the server log has the details",
                   instance=request.url.path)
