"""AdminService.GetEvaluationReport: the latest `indexer evaluate --to-home` report, as figures.

The report is read from its directory on every call (it is small, and a new evaluation must show
without a restart): results.json for the figures, report.md whole, and the PNG plots it links.
Only the plot files the report names are read, by name from a fixed list, so no request can make
the server read another file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hashsvc_client.v1 import admin_pb2

from hashsvc.errors import NotFoundError, ReportUnreadableError

RESULTS = "results.json"
MARKDOWN = "report.md"
PLOTS = ("recall_vs_fpr.png", "recall_by_group.png", "recall_by_transform.png")


def read_report(directory: Path) -> admin_pb2.GetEvaluationReportResponse:
    results = directory / RESULTS
    if not results.is_file():
        raise NotFoundError("no evaluation report has been made: run `indexer evaluate PHOTOS "
                            "--to-home` with this server's home (or write one into its "
                            "--evaluation-report directory)")
    try:
        summary = json.loads(results.read_text())
        markdown = (directory / MARKDOWN).read_text() if (directory / MARKDOWN).is_file() else ""
        response = _figures(summary)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportUnreadableError(f"the evaluation report's {RESULTS} cannot be read "
                                    f"({type(err).__name__}: {err}); run `indexer evaluate "
                                    "--to-home` again") from None
    response.markdown = markdown
    for name in PLOTS:
        path = directory / name
        if path.is_file():
            response.plots.add(name=name, png=path.read_bytes())
    return response


def _figures(summary: dict[str, Any]) -> admin_pb2.GetEvaluationReportResponse:
    point = summary["operating_point"]
    response = admin_pb2.GetEvaluationReportResponse(
        created_at=str(summary["created_at"]), originals=summary["originals"],
        copies=summary["copies"], pairs=summary["pairs"], target_fpr=summary["target_fpr"],
        list_size=point["list_size"], target_per_upload=point["target_per_upload"],
        errors=len(summary["errors"]))
    for name, method in summary["methods"].items():
        upload = point["methods"][name]
        response.methods.add(
            name=name, algorithm=method["algorithm"], description=method["description"],
            default_threshold=method["default_threshold"],
            recall_at_default=method["recall_at_default"],
            false_positive_rate_at_default=method["fpr_at_default"],
            false_matches_per_upload_at_default=upload["per_upload_at_default"],
            threshold_at_upload_target=method["threshold_at_upload_target"],
            recall_at_upload_target=method["recall_at_upload_target"])
    for name, group in summary["groups"].items():
        response.groups.add(name=name, recall_at_default={
            method: float(value) for method, value in group["recall_at_default"].items()})
    return response

