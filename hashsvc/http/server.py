"""The HTTP server of one worker: uvicorn on its own thread and event loop.

With several workers each binds the HTTP port with SO_REUSEPORT, like the gRPC port, and the
supervisor reserves it first so that port 0 means one port for all (see server/ports.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from hashsvc.config import ServerConfig
from hashsvc.errors import HashsvcError
from hashsvc.http.app import create_app
from hashsvc.http.gateway import PrivateSocket
from hashsvc.server.ports import AddressInUseError, split_listen

log = logging.getLogger("hashsvc.http")
START_TIMEOUT = 60.0


class HttpServer:
    def __init__(self, config: ServerConfig, grpc_target: str, *, reuse_port: bool,
                 private: PrivateSocket | None = None) -> None:
        self._private = private
        self._listen = config.resolved_http_listen
        self._socket = _bind(self._listen, reuse_port=reuse_port)
        self.port = int(self._socket.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(
            create_app(config, grpc_target), log_config=None, access_log=False,
            server_header=False, timeout_graceful_shutdown=5, lifespan="on"))
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
        self._thread.join(timeout=10)
        self._socket.close()
        if self._private is not None:
            self._private.close()

    def _run(self) -> None:
        self._server.run(sockets=[self._socket])


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
