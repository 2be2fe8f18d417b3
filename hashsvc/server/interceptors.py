"""Admission, authentication, metrics and request logs for every call, in one interceptor.

Every call is counted and timed; failed calls are logged at INFO (errors at ERROR), successful
ones at DEBUG (see `_Recorder`). The audit log of matches is written by the servicers.

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

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from hashsvc import metrics
from hashsvc.errors import HashsvcError
from hashsvc.keys import KeyRing
from hashsvc.server.keyfile import file_signature, load_keys

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
    added or revoked without a restart.

    A file that does not load (a typo mid-edit, a half-copied file) must not turn every call
    into UNKNOWN: the last good keys keep serving, the error is logged once per change of the
    file (it names the file and the line, never key material: the file holds only hashes), and
    `hashsvc_keys_file_valid` drops to 0 so an alert fires. At start-up there are no good keys
    to keep, so the error is raised (serve refuses to start).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._ring = load_keys(path)
        self._signature = file_signature(path)
        metrics.KEYS_FILE_VALID.set(1)
        log.info("loaded API keys", extra={"keys": len(self._ring), "file": str(path)})

    def refresh(self) -> KeyRing:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._ring
        with self._lock:
            self._checked = now
            signature = file_signature(self.path)
            if signature == self._signature:
                return self._ring
            self._signature = signature  # tried once per change, whatever the outcome
            try:
                self._ring = load_keys(self.path)
            except HashsvcError as err:
                metrics.KEYS_RELOAD_FAILURES.inc()
                metrics.KEYS_FILE_VALID.set(0)
                log.error("keys file not loaded; the previous keys stay in effect",
                          extra={"file": str(self.path), "error": err.message,
                                 "keys": len(self._ring)})
            else:
                metrics.KEYS_FILE_VALID.set(1)
                log.info("loaded API keys", extra={"keys": len(self._ring),
                                                   "file": str(self.path)})
        return self._ring


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps each scan/admin method's handler once, the first time the method is called.

    Why once: gRPC asks the interceptor for every call, and building closures and a new handler
    per call cost about as much as a whole one-hash ScanHashes. The key is therefore read from
    the call's own metadata inside the wrapper, not from the per-call `HandlerCallDetails`.
    """

    def __init__(self, keys: KeyFile | None, max_in_flight: int) -> None:
        self._keys = keys  # None: --insecure-no-auth
        self._lock = threading.Lock()
        self._in_flight = 0
        self._published: int | None = None
        self._max_in_flight = max_in_flight
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped handler)

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        role = required_role(method)
        wrapped = handler if role is None else self._wrap(handler, method, role)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _caller(self, context: grpc.ServicerContext, role: str, method: str) -> str:
        """The caller's key name; aborts the call (counted) if it may not make it."""
        if self._keys is None:
            return "anonymous"
        token = _bearer_token(context.invocation_metadata() or ())
        if token is None:
            denial = (grpc.StatusCode.UNAUTHENTICATED,
                      "missing API key: send metadata 'authorization: Bearer <key>'")
        elif (api_key := self._keys.refresh().identify(token)) is None:
            denial = (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        elif not api_key.allows(role):
            denial = (grpc.StatusCode.PERMISSION_DENIED,
                      f"key {api_key.name!r} lacks the {role!r} role needed for {method}")
        else:
            return api_key.name
        metrics.REJECTED.labels("auth").inc()
        context.abort(*denial)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _admit(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            admitted = self._in_flight < self._max_in_flight
            if admitted:
                self._in_flight += 1
        if not admitted:
            metrics.REJECTED.labels("overload").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"server overloaded: {self._max_in_flight} calls in progress "
                          "(max_concurrent_rpcs); retry with backoff")

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def publish_in_flight(self) -> None:
        """Set the in-flight gauge from the count, if it changed (the runtime's watcher calls
        this ten times a second).

        Why not inc/dec per call: prometheus_client's multiprocess values share one lock per
        process, and under load the per-call `dec` was where threads queued on it (14% of a
        worker's GIL time in py-spy on one-hash ScanHashes). A gauge is sampled by each scrape
        anyway; 100 ms of lag does not change what it shows.
        """
        count = self._in_flight
        if count != self._published:
            metrics.IN_FLIGHT.set(count)
            self._published = count

    def _wrap(self, handler: Any, method: str, role: str) -> Any:
        """The same handler, authenticated, admitted, run with the caller's name set, measured
        and logged. Unary and streaming calls share every step; only the body differs."""
        record = _Recorder(method)

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                with _Call(self, context, role, method, record):
                    return behavior(request, context)
            return call

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with _Call(self, context, role, method, record):
                    yield from behavior(request, context)
            return call

        wrap = streaming if handler.response_streaming else unary
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: wrap(behavior)})
        return handler


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class _Call:
    """One call's bracket: authenticate, admit and name the caller on entry; release and record
    on exit, whatever happened. A class rather than @contextmanager because it runs on every
    call, and a generator-based one costs more."""

    __slots__ = ("_admitted", "_context", "_name", "_owner", "_record", "_started", "_token")

    def __init__(self, owner: CallInterceptor, context: grpc.ServicerContext, role: str,
                 method: str, record: _Recorder) -> None:
        self._owner, self._context, self._record = owner, context, record
        self._started = time.perf_counter()
        self._name, self._admitted = "-", False
        self._token: contextvars.Token[str] | None = None
        try:
            self._name = owner._caller(context, role, method)
            owner._admit(context)
            self._admitted = True
        except BaseException as exc:  # refused: recorded too, then raised to gRPC
            record(context, self._name, self._started, exc)
            raise

    def __enter__(self) -> None:
        self._token = caller.set(self._name)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if self._token is not None:
            caller.reset(self._token)
        if self._admitted:
            self._owner._release()
        self._record(self._context, self._name, self._started, error)


class _Recorder:
    """Counts, times and logs the calls of one method.

    Successful calls are logged at DEBUG only: at thousands of calls a second the INFO line per
    call was the largest single cost after gRPC itself (a fifth of a worker's GIL time on a
    one-hash ScanHashes, py-spy), and it duplicated what the metrics count and the audit log
    records. Failed calls stay at INFO, and errors at ERROR with their traceback.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.short = method.rsplit("/", 1)[-1]
        self.seconds = metrics.REQUEST_SECONDS.labels(self.short)
        self.counters: dict[str, Any] = {}  # status code name -> labelled counter

    def __call__(
        self, context: grpc.ServicerContext, name: str, started: float,
        error: BaseException | None,
    ) -> None:
        seconds = time.perf_counter() - started
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        code_name = getattr(code, "name", str(code))
        counter = self.counters.get(code_name)
        if counter is None:
            counter = self.counters[code_name] = metrics.REQUESTS.labels(self.short, code_name)
        counter.inc()
        self.seconds.observe(seconds)
        if code is grpc.StatusCode.UNKNOWN:
            level = logging.ERROR
        elif code is grpc.StatusCode.OK:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "rpc", extra={
                "method": self.method, "code": code_name, "caller": name,
                "ms": round(seconds * 1000, 3),
            }, exc_info=error if level == logging.ERROR else None)
