"""A page not built yet: its nav entry leads to a short note instead of a 404.

Each page of NAV (context.py) has its own module; until its owner fills it in, the module's
`routes` returns `placeholder_routes(ctx, name)`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import NAV, Console


def placeholder_routes(ctx: Console, name: str) -> list[BaseRoute]:
    label = dict(NAV)[name]

    async def page(request: Request) -> Response:
        return ctx.render(request, "placeholder.html", title=label)

    return [Route(f"/{name}", ctx.page(page), methods=["GET"])]
