"""One asyncio gRPC channel to this process's own gRPC server, for the HTTP side.

The socket lives in a fresh 0700 directory (`private_socket`): only this user can connect, so
the path cannot be used to reach the services past TLS or mutual TLS. Calls carry the HTTP
caller's key as `authorization: Bearer`, so the interceptor authenticates them like any other.

Calls also carry this process's `GATEWAY_MARK`, which is what tells the interceptor a call is
the gateway's (counted as HTTP, its HTTP client's address trusted). Why not the `unix:` peer
alone: `--listen unix:PATH` puts the gRPC port itself on a Unix socket, open to every local
client, and such a client must not pass for the gateway.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

SERVICES = {"scan": "hashsvc.v1.ScanService", "admin": "hashsvc.v1.AdminService",
            "replica": "hashsvc.v1.ReplicaService"}
# The peer the gRPC server sees for calls that came in over HTTP (see interceptors.py).
GATEWAY_PEER_PREFIX = "unix:"
# A random value, new in each process, sent with every gateway call (see module docstring).
GATEWAY_MARK_METADATA = "x-hashsvc-gateway"
GATEWAY_MARK = secrets.token_hex(16)
# The HTTP client's address, sent with each call so that limits per connection apply to each
# HTTP client rather than to the gateway's one channel. Trusted only on calls `from_gateway`.
HTTP_PEER_METADATA = "x-hashsvc-http-peer"


def from_gateway(peer: str, metadata: Any) -> bool:
    """Whether a call with this peer and metadata is this process's gateway's."""
    if not peer.startswith(GATEWAY_PEER_PREFIX):
        return False
    return any(key == GATEWAY_MARK_METADATA and isinstance(value, str)
               and hmac.compare_digest(value.encode(), GATEWAY_MARK.encode())
               for key, value in metadata or ())


class PrivateSocket:
    """A Unix socket path in a directory only this user can enter; removed by `close`.

    The gateway's mark is written beside the socket (0600): whoever may connect to the socket
    may speak as the gateway anyway, and so a tool of this user (the tests) can."""

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="hashsvc-gateway-"))
        self.target = f"unix:{self._directory / 'grpc.sock'}"
        fd = os.open(self._directory / "mark", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(GATEWAY_MARK)

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


@dataclass(frozen=True)
class GatewayError(Exception):
    """A call that ended with a gRPC status other than OK."""

    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str | bytes], ...] = ()


class Gateway:
    """Unary and client-streaming calls to the local gRPC server, by method name.

    Created inside the HTTP server's event loop (grpc.aio channels belong to the loop that made
    them)."""

    def __init__(self, target: str, *, max_message: int) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_receive_message_length", 64 << 20),
        ])
        self._unary: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, service: str, method: str, request: Message, response_type: type[Message],
                   key: str | None, peer: str = "") -> Message:
        path = f"/{SERVICES[service]}/{method}"
        callable_ = self._unary.get(path)
        if callable_ is None:
            callable_ = self._unary[path] = self._channel.unary_unary(
                path, request_serializer=_serialize,
                response_deserializer=response_type.FromString)
        try:
            response: Message = await callable_(request, metadata=_metadata(key, peer))
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
        return response

    async def stream(self, service: str, method: str, requests: Iterable[Message],
                     response_type: type[Message], key: str | None, peer: str = "") -> Message:
        """A client-streaming call (AddEntries and friends): the requests, then one answer."""
        path = f"/{SERVICES[service]}/{method}"
        callable_ = self._streams.get(path)
        if callable_ is None:
            callable_ = self._streams[path] = self._channel.stream_unary(
                path, request_serializer=_serialize,
                response_deserializer=response_type.FromString)

        async def each() -> AsyncIterator[Message]:
            for request in requests:
                yield request

        try:
            response: Message = await callable_(each(), metadata=_metadata(key, peer))
        except grpc.aio.AioRpcError as err:
            raise _error(err) from None
        return response


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _metadata(key: str | None, peer: str) -> tuple[tuple[str, str], ...]:
    """Why the key is checked here: gRPC refuses metadata outside printable ASCII by raising
    in the client, which would surface as a 500; a key never holds such characters, so the
    caller gets the UNAUTHENTICATED a wrong key gets (the key itself is never echoed)."""
    if key is not None and not all("!" <= char <= "~" for char in key):
        raise GatewayError(grpc.StatusCode.UNAUTHENTICATED,
                           "the API key holds characters no key has (keys are printable ASCII)")
    sent: tuple[tuple[str, str], ...] = ((GATEWAY_MARK_METADATA, GATEWAY_MARK),)
    if peer:
        sent += ((HTTP_PEER_METADATA, peer),)
    return (("authorization", f"Bearer {key}"), *sent) if key else sent


def _error(err: grpc.aio.AioRpcError) -> GatewayError:
    trailing = tuple((item.key, item.value) for item in (err.trailing_metadata() or ()))
    return GatewayError(err.code(), err.details() or "", trailing)
