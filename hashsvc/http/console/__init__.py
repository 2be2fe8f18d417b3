"""The web console for trust-and-safety analysts (admin role), server-rendered.

Structure (README "Web console"): each page is a module here, `<page>.py`, exposing
`routes(ctx: Console) -> list[BaseRoute]` (paths relative to /console, e.g. "/banks"), with its
templates under templates/<page>/ extending "base.html". `Console` (context.py) gives a page
the gRPC call with the signed-in key, the session guard, CSRF checks and rendering. This module
only assembles the pages, the sign-in routes and the static files, behind the security headers.

The pages are imported inside `routes`, not here: `hashsvc serve` imports `sessions` from this
package before it decides on several workers, and the pages import `hashsvc.metrics`, which must
not be imported before the supervisor sets PROMETHEUS_MULTIPROC_DIR (server/app.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from starlette.routing import BaseRoute, Mount, Router
from starlette.staticfiles import StaticFiles

from hashsvc.config import ServerConfig
from hashsvc.http.gateway import Gateway

STATIC = Path(__file__).resolve().parent / "static"


def routes(config: ServerConfig, gateway: Callable[[], Gateway]) -> list[BaseRoute]:
    from hashsvc.http.console import (
        auth,
        banks,
        check,
        entries,
        evaluation,
        exchanges,
        matches,
        snapshot,
    )
    from hashsvc.http.console.context import Console
    from hashsvc.http.console.security import SecurityHeaders

    pages = (auth, banks, entries, exchanges, matches, snapshot, check, evaluation)
    ctx = Console(config, gateway)
    console: list[BaseRoute] = [Mount("/static", app=StaticFiles(directory=STATIC),
                                      name="static")]
    for page in pages:
        console.extend(page.routes(ctx))
    return [Mount("", app=SecurityHeaders(Router(routes=console)))]
