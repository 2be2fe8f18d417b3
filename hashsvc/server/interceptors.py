"""Admission, authentication, metrics and request logs for every call, in one interceptor.

Every call is counted and timed; failed calls are logged at INFO (errors at ERROR), successful
ones at DEBUG (see `_Recorder`). The audit log of matches is written by the servicers.

Why one: all of them need the caller's identity and the call's outcome, and a second wrapper
would time the first. The caller's key *name* is put in a context variable for the servicers
(audit); the key itself is compared by hash and never stored or logged.

Admission: at most `max_concurrent_rpcs` scan/admin calls run at once, decided as each call
arrives (see admission.py); the next one is refused with RESOURCE_EXHAUSTED at once, without its
body being read, and counted like every other call. So that one client cannot hold every slot,
streams are also limited per key and per connection (`StreamLimits`), and every wait on the
client (an upload, an answer not taken) is bounded by `client_idle_timeout` (`ClientWatch`).
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from hashsvc import metrics
from hashsvc.http.gateway import HTTP_PEER_METADATA, from_gateway
from hashsvc.server.admission import AdmissionPool, StreamLimits
from hashsvc.server.live_keys import KeyFile
from hashsvc.server.scope import caller_banks
from hashsvc.server.streams import ClientWatch

log = logging.getLogger("hashsvc.rpc")
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="-")
# "http" for a call the HTTP/JSON API made on a client's behalf (through its gateway), else
# "grpc": the label of the request metrics, and said in the audit records of HTTP scans.
protocol: contextvars.ContextVar[str] = contextvars.ContextVar("protocol", default="grpc")


def protocol_of(context: grpc.ServicerContext) -> str:
    """Calls from the HTTP gateway arrive over its Unix socket with its mark (gateway.py)."""
    return "http" if from_gateway(context.peer(), context.invocation_metadata()) else "grpc"

_REFLECTION = "/grpc.reflection."
ROLE_BY_SERVICE = {
    "/hashsvc.v1.ScanService/": "scan",
    "/hashsvc.v1.AdminService/": "admin",
}


def required_role(method: str) -> str | None:
    """The role a method needs; None for health checks, reflection and ReplicaService, which
    are public."""
    for prefix, role in ROLE_BY_SERVICE.items():
        if method.startswith(prefix):
            return role
    return None


class CallInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Wraps each scan/admin method's handler once, the first time the method is called.

    Why once: gRPC asks the interceptor for every call, and building closures and a new handler
    per call cost about as much as a whole one-hash ScanHashes. Per call it only picks the
    admitted or the refusing handler; the key is read from the call's own metadata inside the
    wrapper, not from the per-call `HandlerCallDetails`.
    """

    def __init__(self, keys: KeyFile | None, pool: AdmissionPool, watch: ClientWatch,
                 streams: StreamLimits) -> None:
        self._keys = keys  # None: --insecure-no-auth
        self._pool = pool
        self._watch = watch
        self._streams = streams
        # Reflection streams need no key and stay open as long as their client likes: on a pool
        # of their own they can only ever hold up each other, never refusals or health checks.
        self._reflection_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reflection")
        self._published: int | None = None
        # method -> (handler, admitted handler, refusing handler; None for public methods)
        self._wrapped: dict[str, tuple[Any, Any, Any]] = {}

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            role = required_role(method)
            record = _Recorder(method)
            if role is None:
                public = (_on_pool(handler, self._reflection_pool)
                          if method.startswith(_REFLECTION) else handler)
                cached = (handler, public, None)
            else:
                cached = (handler, self._wrap(handler, method, role, record),
                          self._refusal(handler, record))
            self._wrapped[method] = cached
        if cached[2] is None or self._pool.has_room():
            return cached[1]
        return cached[2]

    def _caller(
        self, context: grpc.ServicerContext, role: str, method: str
    ) -> tuple[str, frozenset[str] | None]:
        """The caller's key name and bank scope; aborts the call (counted) if it may not make
        it."""
        if self._keys is None:
            return "anonymous", None
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
            return api_key.name, api_key.banks
        metrics.REJECTED.labels("auth").inc()
        context.abort(*denial)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _open_stream(self, context: grpc.ServicerContext, name: str) -> tuple[str, str]:
        connection = _connection(context)
        refused = self._streams.open(name, connection)
        if refused is not None:
            metrics.REJECTED.labels("streams").inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        return name, connection

    def publish_in_flight(self) -> None:
        """Set the in-flight gauge from the count, if it changed (the runtime's watcher calls
        this ten times a second).

        Why not inc/dec per call: prometheus_client's multiprocess values share one lock per
        process, and under load the per-call `dec` was where threads queued on it (14% of a
        worker's GIL time in py-spy on one-hash ScanHashes). A gauge is sampled by each scrape
        anyway; 100 ms of lag does not change what it shows.
        """
        count = self._pool.in_flight
        if count != self._published:
            metrics.IN_FLIGHT.set(count)
            self._published = count

    def _refusal(self, handler: Any, record: _Recorder) -> Any:
        """A handler that refuses the call as overloaded without reading its request.

        Declared as request-streaming whatever the method is: gRPC then calls it at once with an
        unread request iterator, where a unary handler would first wait for the whole upload."""
        message = (f"server overloaded: {self._pool.limit} calls in progress "
                   "(max_concurrent_rpcs); retry with backoff")

        def refuse(_requests: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.REJECTED.labels("overload").inc()
            try:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            except BaseException as refused:
                record(context, "-", started, refused)
                raise

        factory = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                   else grpc.stream_unary_rpc_method_handler)
        return factory(refuse, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)

    def _wrap(self, handler: Any, method: str, role: str, record: _Recorder) -> Any:
        """The same handler, authenticated, run on the admission pool with the caller's name
        set, measured and logged. Unary and streaming calls share every step; only the body
        differs.

        A unary request is declared streamed and received here (`_receive`): gRPC would read it
        before calling the handler, on one of the admission slots, and wait for it forever. So
        the key is checked before the upload is read, and an upload that does not arrive within
        `client_idle_timeout` ends the call.
        """
        stream = bool(handler.request_streaming)
        receive = _as_is if stream else self._receive

        def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(requests: Any, context: grpc.ServicerContext) -> Any:
                with _Call(self, context, role, method, record, stream):
                    return behavior(receive(requests, context), context)
            return call

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def call(requests: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                with _Call(self, context, role, method, record, stream):
                    yield from behavior(receive(requests, context), context)
            return call

        behavior = next(getattr(handler, kind) for kind in _KINDS if getattr(handler, kind))
        wrapped = (streaming if handler.response_streaming else unary)(behavior)
        # gRPC runs a behavior that carries this attribute on that pool instead of its own
        # (grpc._server._select_thread_pool_for_behavior).
        wrapped.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
        kinds: dict[str, Any] = dict.fromkeys(_KINDS)
        kinds["stream_stream" if handler.response_streaming else "stream_unary"] = wrapped
        return handler._replace(request_streaming=True, **kinds)

    def _receive(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        """The one request of a unary call, waited for under the client watch."""
        token = id(context)
        self._watch.waiting(token, context, "the request to arrive")
        try:
            request = next(requests, None)
        except grpc.RpcError:
            request = None
        finally:
            in_time = self._watch.done(token)
        if request is None:
            if not in_time:  # the watch ended it; the cancellation may not show as inactive yet
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the call ended before its request arrived (client_idle_timeout)")
            if context.is_active():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "expected one request message, got none")
            # Gone before its request arrived: cancelled by its client, or by the watch (which
            # set DEADLINE_EXCEEDED). Abort, so that gRPC does not log it as a server error.
            context.abort(context.code() or grpc.StatusCode.CANCELLED,
                          "the call ended before its request arrived")
        return request


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _as_is(requests: Any, _context: grpc.ServicerContext) -> Any:
    return requests


def _on_pool(handler: Any, pool: ThreadPoolExecutor) -> Any:
    """The same handler, run on `pool` instead of the server's own."""
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            def run(request: Any, context: grpc.ServicerContext,
                    behavior: Callable[..., Any] = behavior) -> Any:
                return behavior(request, context)
            run.experimental_thread_pool = pool  # type: ignore[attr-defined]
            return handler._replace(**{kind: run})
    return handler


def _connection(context: grpc.ServicerContext) -> str:
    """The client connection a stream counts against. Every HTTP client shares the gateway's
    one channel, so for its calls it is the HTTP client's own address, which the gateway sends
    (trusted on the gateway's calls only: see gateway.py)."""
    peer: str = context.peer()
    if from_gateway(peer, context.invocation_metadata()):
        for key, value in context.invocation_metadata() or ():
            if key == HTTP_PEER_METADATA:
                return f"http:{value}"
    return peer


def _bearer_token(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class _Call:
    """One admitted call's bracket: authenticate, count a stream and name the caller on entry;
    uncount and record on exit, whatever happened. A class rather than @contextmanager because
    it runs on every call, and a generator-based one costs more."""

    __slots__ = ("_banks", "_banks_token", "_context", "_name", "_owner", "_protocol_token",
                 "_record", "_started", "_stream", "_token")

    def __init__(self, owner: CallInterceptor, context: grpc.ServicerContext, role: str,
                 method: str, record: _Recorder, stream: bool) -> None:
        self._owner, self._context, self._record = owner, context, record
        self._started = time.perf_counter()
        self._name = "-"
        self._banks: frozenset[str] | None = None
        self._stream: tuple[str, str] | None = None
        self._token: contextvars.Token[str] | None = None
        self._banks_token: contextvars.Token[frozenset[str] | None] | None = None
        self._protocol_token: contextvars.Token[str] | None = None
        try:
            self._name, self._banks = owner._caller(context, role, method)
            if stream:
                self._stream = owner._open_stream(context, self._name)
        except BaseException as exc:  # refused: recorded too, then raised to gRPC
            record(context, self._name, self._started, exc)
            raise

    def __enter__(self) -> None:
        self._token = caller.set(self._name)
        self._banks_token = caller_banks.set(self._banks)
        self._protocol_token = protocol.set(protocol_of(self._context))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if self._token is not None:
            caller.reset(self._token)
        if self._banks_token is not None:
            caller_banks.reset(self._banks_token)
        if self._protocol_token is not None:
            protocol.reset(self._protocol_token)
        if self._stream is not None:
            self._owner._streams.close(*self._stream)
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
        self.seconds: dict[str, Any] = {}  # protocol -> labelled histogram
        self.counters: dict[tuple[str, str], Any] = {}  # (code name, protocol) -> counter

    def __call__(
        self, context: grpc.ServicerContext, name: str, started: float,
        error: BaseException | None,
    ) -> None:
        seconds = time.perf_counter() - started
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
        code_name = getattr(code, "name", str(code))
        over = protocol_of(context)
        counter = self.counters.get((code_name, over))
        if counter is None:
            counter = self.counters[code_name, over] = metrics.REQUESTS.labels(
                self.short, code_name, over)
        counter.inc()
        histogram = self.seconds.get(over)
        if histogram is None:
            histogram = self.seconds[over] = metrics.REQUEST_SECONDS.labels(self.short, over)
        histogram.observe(seconds)
        if code is grpc.StatusCode.UNKNOWN:
            level = logging.ERROR
        elif code is grpc.StatusCode.OK:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "rpc", extra={
                "method": self.method, "code": code_name, "caller": name, "protocol": over,
                "ms": round(seconds * 1000, 3),
            }, exc_info=error if level == logging.ERROR else None)
