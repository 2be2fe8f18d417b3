"""Admission, authentication, metrics and request logs for every call, in one interceptor.

Why one: all of them need the caller's identity and the call's outcome, and a second wrapper
would time the first. The caller's key *name* is put in a context variable for the servicers
(audit); the key itself is compared by hash and never stored or logged.

Admission: at most `max_in_flight` scan/admin calls run at once; the next one fails fast with
RESOURCE_EXHAUSTED (and is counted) instead of queueing without bound. This is done here rather
than with gRPC's `maximum_concurrent_rpcs` alone because gRPC rejects before any interceptor
runs, so its rejections could be neither counted nor explained; gRPC's limit stays as a backstop
a little above this one, leaving room for health checks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from hashsvc import metrics
from hashsvc.keys import ApiKey, KeyRing

log = logging.getLogger("hashsvc.rpc")
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="-")

ROLE_BY_SERVICE = {
    "/hashsvc.v1.ScanService/": "scan",
    "/hashsvc.v1.AdminService/": "admin",
}


def required_role(method: str) -> str | None:
    """The role a method needs; None for health checks and reflection, which are public."""
    for prefix, role in ROLE_BY_SERVICE.items():
        if method.startswith(prefix):
            return role
    return None


class KeyFile:
    """The keys file, re-read when it changes (checked at most once a second), so keys can be
    added or revoked without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self._ring = KeyRing([])
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> KeyRing:
        now = time.monotonic()
        if not force and now - self._checked < 1.0:
            return self._ring
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                mtime = None
            if force or mtime != self._mtime:
                self._ring = KeyRing.load(self.path)
                self._mtime = mtime
                log.info("loaded API keys", extra={"keys": len(self._ring), "file": str(self.path)})
        return self._ring


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, keys: KeyFile | None, max_in_flight: int) -> None:
        self._keys = keys  # None: --insecure-no-auth
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        role = required_role(method)
        if role is None:
            return handler
        if self._keys is None:
            return self._wrap(handler, method, "anonymous", None)
        api_key, denial = self._authenticate(details, role, method)
        if denial is not None:
            metrics.REJECTED.labels("auth").inc()
            return self._wrap(handler, method, "-", denial)
        assert api_key is not None
        return self._wrap(handler, method, api_key.name, None)

    def _authenticate(
        self, details: grpc.HandlerCallDetails, role: str, method: str
    ) -> tuple[ApiKey | None, tuple[grpc.StatusCode, str] | None]:
        assert self._keys is not None
        token = _bearer_token(details.invocation_metadata or ())
        if token is None:
            return None, (grpc.StatusCode.UNAUTHENTICATED,
                          "missing API key: send metadata 'authorization: Bearer <key>'")
        api_key = self._keys.refresh().identify(token)
        if api_key is None:
            return None, (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        if not api_key.allows(role):
            return None, (grpc.StatusCode.PERMISSION_DENIED,
                          f"key {api_key.name!r} lacks the {role!r} role needed for {method}")
        return api_key, None


    def _wrap(
        self, handler: Any, method: str, name: str, denial: tuple[grpc.StatusCode, str] | None
    ) -> Any:
        """The same handler, admitted, run with the caller's name set, measured and logged."""
        slots, limit = self._slots, self._max_in_flight

        @contextlib.contextmanager
        def observed(context: grpc.ServicerContext) -> Iterator[None]:
            started = time.perf_counter()
            token = caller.set(name)
            admitted = False
            error: BaseException | None = None
            try:
                if denial is not None:
                    context.abort(*denial)
                admitted = slots.acquire(blocking=False)
                if not admitted:
                    metrics.REJECTED.labels("overload").inc()
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"server overloaded: {limit} calls in progress "
                                  "(max_concurrent_rpcs); retry with backoff")
                metrics.IN_FLIGHT.inc()
                yield
            except BaseException as exc:
                error = exc
                raise
            finally:
                if admitted:
                    metrics.IN_FLIGHT.dec()
                    slots.release()
                caller.reset(token)
                _log_call(context, method, name, started, error)

        def behave(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if handler.response_streaming:
                def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                    with observed(context):
                        yield from behavior(request, context)
                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                with observed(context):
                    return behavior(request, context)
            return unary

        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: behave(behavior)})
        return handler


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _log_call(
    context: grpc.ServicerContext, method: str, name: str, started: float,
    error: BaseException | None,
) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    failed = code == grpc.StatusCode.UNKNOWN
    seconds = time.perf_counter() - started
    code_name = getattr(code, "name", str(code))
    short = method.rsplit("/", 1)[-1]
    metrics.REQUESTS.labels(short, code_name).inc()
    metrics.REQUEST_SECONDS.labels(short).observe(seconds)
    log.log(logging.ERROR if failed else logging.INFO, "rpc", extra={
        "method": method, "code": code_name, "caller": name, "ms": round(seconds * 1000, 3),
    }, exc_info=error if failed else None)
