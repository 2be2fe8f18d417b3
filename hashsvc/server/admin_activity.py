"""The AdminService RPCs for what happens around the banks: exchange syncs (their state, and
"sync now") and the recent matches of the audit trail. A part of `AdminServicer` kept in its
own module; the work is in exchange_admin.py and recent_matches.py."""

from __future__ import annotations

import logging

import grpc
from hashsvc_client.v1 import admin_pb2, admin_pb2_grpc

from hashsvc.errors import HashsvcError
from hashsvc.server.exchange_admin import ExchangeAdmin
from hashsvc.server.interceptors import caller
from hashsvc.server.recent_matches import recent_matches
from hashsvc.server.runtime import Runtime
from hashsvc.server.status import abort

log = logging.getLogger("hashsvc.admin")


class ActivityServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        config = runtime.config
        scheduled = config.exchange_sync and config.role != "scan"
        self._exchanges = ExchangeAdmin(
            runtime.store, runtime.audit, config.exchange_sync_every if scheduled else None,
            runtime.stopping)

    def ListExchangeBindings(
        self, request: admin_pb2.ListExchangeBindingsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListExchangeBindingsResponse:
        try:
            bindings = self._exchanges.bindings(request.bank)
        except HashsvcError as err:
            abort(context, err)
        return admin_pb2.ListExchangeBindingsResponse(bindings=bindings)

    def SyncExchange(
        self, request: admin_pb2.SyncExchangeRequest, context: grpc.ServicerContext
    ) -> admin_pb2.SyncExchangeResponse:
        try:
            run, finished = self._exchanges.sync_now(request.bank, caller.get(),
                                                     request.wait_seconds)
        except HashsvcError as err:
            abort(context, err)
        log.info("admin", extra={"action": "sync_exchange", "caller": caller.get(),
                                 "bank": run.bank, "outcome": run.outcome})
        return admin_pb2.SyncExchangeResponse(
            bank=run.bank, exchange=run.exchange, finished=finished, run=run.to_proto(),
            feedback_sent=run.feedback_sent, feedback_failed=run.feedback_failed)

    def ListRecentMatches(
        self, request: admin_pb2.ListRecentMatchesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRecentMatchesResponse:
        try:
            return recent_matches(self._runtime.store, self._runtime.audit.path,
                                  request.limit, request.bank)
        except HashsvcError as err:
            abort(context, err)
