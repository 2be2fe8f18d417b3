"""The console's Snapshot page: what each replica serves (AdminService.ListReplicas), and a
Publish button (PublishSnapshot).

Everything shown comes from those two calls with the signed-in key: a replica's row is what it
answered itself (ReplicaService), or "unreachable" and why.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hashsvc_client.v1 import admin_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hashsvc.http.console.context import PREFIX, Console


@dataclass(frozen=True)
class ReplicaRow:
    address: str
    this_server: bool
    reachable: bool
    error: str
    version: str
    role: str
    workers: int
    age: str
    loaded: str
    pending: int
    state: str  # "current", "behind", "no snapshot" or "unreachable"


def routes(ctx: Console) -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        listed = await ctx.call(request, "admin", "ListReplicas", admin_pb2.ListReplicasRequest(),
                                admin_pb2.ListReplicasResponse)
        assert isinstance(listed, admin_pb2.ListReplicasResponse)
        return ctx.render(request, "snapshot/page.html", title="Snapshot",
                          current_version=listed.current_version,
                          store_revision=listed.store_revision,
                          replicas=[_row(r) for r in listed.replicas])

    async def publish(request: Request) -> Response:
        form = await ctx.form(request)
        force = form.get("force") == "on"
        result = await ctx.call(request, "admin", "PublishSnapshot",
                                admin_pb2.PublishSnapshotRequest(force=force),
                                admin_pb2.PublishSnapshotResponse)
        assert isinstance(result, admin_pb2.PublishSnapshotResponse)
        if result.published:
            message = (f"Published snapshot {result.version}: {result.counts.entries:,} entries, "
                       f"built in {result.build_seconds:.1f} s. This server serves it now; "
                       "replicas load it at their next poll.")
        else:
            message = (f"Nothing to publish: the store has not changed since {result.version} "
                       "(tick \"even if unchanged\" to build it again).")
        return ctx.redirect(request, f"{PREFIX}/snapshot", flash=message)

    return [Route("/snapshot", ctx.page(page), methods=["GET"]),
            Route("/snapshot/publish", ctx.page(publish), methods=["POST"])]


def _row(replica: admin_pb2.Replica) -> ReplicaRow:
    status = replica.status
    if not replica.reachable:
        state = "unreachable"
    elif not status.version:
        state = "no snapshot"
    else:
        state = "current" if replica.current else "behind"
    return ReplicaRow(
        address=replica.address, this_server=replica.this_server, reachable=replica.reachable,
        error=replica.error, version=status.version, role=status.role, workers=status.workers,
        age=age(status.age_seconds) if status.version else "",
        loaded=utc(status.loaded_at) if status.version else "",
        pending=replica.pending_changes, state=state)


def age(seconds: float) -> str:
    """3 s, 4 min, 2 h 5 min, 3 d 4 h: to the unit an operator reads at a glance."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours == 0:
        return f"{minutes} min"
    if days == 0:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def utc(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

