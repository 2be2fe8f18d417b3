"""The HTTP server's connections have TCP_NODELAY. Without it uvicorn's two writes of a response
(headers, then body) waited for the client's delayed ACK: 44 ms per call on loopback, where the
same call over gRPC took about 1 ms (loadtests/bench_http.py found it). asyncio sets the option
only on accepted sockets whose protocol says TCP, and they inherit that from the listening
socket, so this checks the socket `server._bind` makes, through asyncio as uvicorn uses it."""

from __future__ import annotations

import asyncio
import socket

from hashsvc.http.server import _bind


def test_connections_to_the_http_port_are_accepted_with_nodelay() -> None:
    async def accepted_nodelay() -> int:
        listening = _bind("127.0.0.1:0", reuse_port=False)
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, sock=listening)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1",
                                                      listening.getsockname()[1])
            result = await asyncio.wait_for(seen, timeout=30)
            writer.close()
            return result
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
