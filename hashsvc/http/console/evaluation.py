"""The console's "Evaluation" page (to be built by h17-ops-b; a placeholder until then)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from hashsvc.http.console.context import Console
from hashsvc.http.console.placeholder import placeholder_routes


def routes(ctx: Console) -> list[BaseRoute]:
    return placeholder_routes(ctx, "evaluation")
