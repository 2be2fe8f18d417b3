"""What every exchange's local stand-in shares: answering with a status and a body, and a
loopback server running a handler for the length of a test.

Why: each connector's test serves its exchange's documented format (README "Exchanges": no
exchange is reachable from here); only the format differs between them, not the serving.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class StandInHandler(BaseHTTPRequestHandler):
    """A handler whose answers say `Retry-After: 0` (so a client's rate-limit waits cost a
    test nothing) and whose requests are not logged."""

    content_type: ClassVar[str] = "application/json"

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`http://127.0.0.1:PORT` of a server running `handler`, shut down afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
