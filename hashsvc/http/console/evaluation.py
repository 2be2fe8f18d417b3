"""The console's Evaluation page: the latest `indexer evaluate --to-home` report
(AdminService.GetEvaluationReport): its figures as tables, and its plots.

The plots are served by this page from the RPC's bytes, by the plot's name among those the
report holds (`/console/evaluation/plots/<name>`): no file path reaches the browser, and no
request can name a file.
"""

from __future__ import annotations

from hashsvc_client.v1 import admin_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import Console
from hashsvc.http.gateway import GatewayError

TEMPLATE = "evaluation/page.html"
PLOT_TITLES = {
    "recall_vs_fpr.png": "Recall against false-positive rate, per method",
    "recall_by_group.png": "Recall by transform group at the target rate",
    "recall_by_transform.png": "Recall by transform at the target rate",
}


def routes(ctx: Console) -> list[BaseRoute]:
    async def report(request: Request) -> admin_pb2.GetEvaluationReportResponse:
        answer = await ctx.call(request, "admin", "GetEvaluationReport",
                                admin_pb2.GetEvaluationReportRequest(),
                                admin_pb2.GetEvaluationReportResponse)
        assert isinstance(answer, admin_pb2.GetEvaluationReportResponse)
        return answer

    async def page(request: Request) -> Response:
        try:
            found = await report(request)
        except GatewayError as err:
            return ctx.gateway_error(request, err, template=TEMPLATE, title="Evaluation")
        methods = [m.name for m in found.methods]
        return ctx.render(
            request, TEMPLATE, title="Evaluation", report=found, methods=methods,
            percent=_percent,
            plots=[(p.name, PLOT_TITLES.get(p.name, p.name)) for p in found.plots])

    async def plot(request: Request) -> Response:
        name = request.path_params["name"]
        found = await report(request)
        for item in found.plots:
            if item.name == name:
                return Response(item.png, media_type="image/png")
        return ctx.render(request, "error.html", status=404, title="Evaluation",
                          error="The latest evaluation report has no such plot.")

    return [Route("/evaluation", ctx.page(page), methods=["GET"]),
            Route("/evaluation/plots/{name}", ctx.page(plot), methods=["GET"])]


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"
