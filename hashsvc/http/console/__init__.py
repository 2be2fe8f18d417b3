"""The web console for trust-and-safety analysts (admin role), server-rendered."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from hashsvc.config import ServerConfig
from hashsvc.http.gateway import Gateway


def routes(config: ServerConfig, gateway: Callable[[], Gateway]) -> list[BaseRoute]:
    async def index(_request: Request) -> Response:
        return HTMLResponse("<!doctype html><title>hashsvc</title><h1>hashsvc console</h1>")

    return [Route("/", index)]
