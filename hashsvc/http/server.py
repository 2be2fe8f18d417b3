"""The HTTP server of one worker: uvicorn on its own thread and event loop.

With several workers each binds the HTTP port with SO_REUSEPORT, like the gRPC port, and the
supervisor reserves it first so that port 0 means one port for all (see server/ports.py).

Same transport security as the gRPC port: with --tls-cert/--tls-key it serves HTTPS with that
certificate, and with --tls-client-ca it requires a client certificate signed by that CA.
Slow clients are bounded: a connection whose request headers have not all arrived within
--client-idle-timeout is closed (`_HeaderDeadline`), an idle keep-alive connection after 5 s, a
body that stops arriving for --client-idle-timeout gets 408 (bodies.py), and requests in
progress are capped (app.py). `stop` drains: the port closes at once, requests in progress
get `grace` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.http.app import create_app
from hashsvc.http.gateway import PrivateSocket
from hashsvc.server.ports import AddressInUseError, split_listen

log = logging.getLogger("hashsvc.http")
START_TIMEOUT = 60.0


class HttpServer:
    def __init__(self, config: ServerConfig, grpc_target: str, *, reuse_port: bool,
                 private: PrivateSocket | None = None, grace: float = 20.0) -> None:
        self._private = private
        self._listen = config.resolved_http_listen
        self._socket = _bind(self._listen, reuse_port=reuse_port)
        self.port = int(self._socket.getsockname()[1])
        self._grace = grace
        self._server = uvicorn.Server(uvicorn.Config(
            create_app(config, grpc_target), log_config=None, access_log=False,
            server_header=False, timeout_graceful_shutdown=int(grace), lifespan="on",
            timeout_keep_alive=5, http=_header_deadline(config.client_idle_timeout),
            ssl_certfile=_tls(config),
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            ssl_ca_certs=str(config.tls_client_ca) if config.tls_client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.tls_client_ca else ssl.CERT_NONE))
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    def start(self) -> int:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HashsvcError(f"the HTTP server on {self._listen} did not start")
            time.sleep(0.01)
        return self.port

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=self._grace + 5)
        self._socket.close()
        if self._private is not None:
            self._private.close()

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])


class _NoColourCodes(logging.Filter):
    """uvicorn puts a copy of each message with ANSI colour codes in `color_message`; in the
    JSON log lines (hashsvc/logs.py) that is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


logging.getLogger("uvicorn.error").addFilter(_NoColourCodes())


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers.

    Why: uvicorn times out only an idle kept-alive connection, so a client that connects and
    sends its headers a byte at a time (slowloris) would hold a connection, and a file
    descriptor, for ever. Here a connection on which no new request has begun `seconds` after
    it opened or after its last answer is closed. uvicorn starts a new request cycle (`cycle`)
    once a request's headers are complete; that is what the deadline checks."""

    deadline_seconds = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        self.loop.call_later(self.deadline_seconds, self._deadline, self.cycle)

    def _deadline(self, armed_with: object) -> None:
        if self.cycle is armed_with and not self.transport.is_closing():
            self.transport.close()


def _header_deadline(seconds: float) -> type[H11Protocol]:
    return type("HeaderDeadline", (_HeaderDeadline,), {"deadline_seconds": seconds})


def _tls(config: ServerConfig) -> str | None:
    """The certificate file, if TLS is on (checked as for the gRPC port)."""
    if config.tls_cert is None:
        return None
    if config.tls_key is None:
        raise HashsvcError("--tls-cert needs --tls-key")
    return str(config.tls_cert)


def _bind(listen: str, *, reuse_port: bool) -> socket.socket:
    host, port, family = split_listen(listen)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
    # TCP (they inherit it from this one). Without it, uvicorn's two writes of a response
    # (headers, body) met the client's delayed ACK: 44 ms a call, measured (bench_http.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise AddressInUseError(f"cannot listen on {listen} (--http-listen): "
                                f"{err.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock
