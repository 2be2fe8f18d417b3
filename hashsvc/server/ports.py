"""The gRPC port: refuse one that is already in use, and reserve it for the workers.

Why a probe: workers bind with SO_REUSEPORT so the kernel can spread connections across them,
but the same option lets a *second* `hashsvc serve` (another home, other keys) bind beside a
running one and silently take half of the new connections. A socket bound *without*
SO_REUSEPORT conflicts with any socket already bound to the address, so binding one first tells
"free" from "taken" whatever the other server's worker count. SO_REUSEADDR is set on the probe
only so that connections of a server that just stopped (TIME_WAIT) do not block a restart; it
never lets a bind succeed beside a listening socket.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

from hashsvc.errors import HashsvcError


class AddressInUseError(HashsvcError):
    """Another process listens on the address: refuse to start rather than share the port."""


def split_listen(listen: str) -> tuple[str, int, socket.AddressFamily]:
    """host (without IPv6 brackets), port and address family of a `host:port` setting."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise HashsvcError(f"--listen {listen!r}: expected host:port") from None
    return host, port, socket.AF_INET6 if ":" in host else socket.AF_INET


def refuse_if_in_use(listen: str) -> int:
    """The concrete port `listen` names (port 0: one the kernel picks now), or AddressInUseError
    if any socket is already bound to it, with or without SO_REUSEPORT. A Unix socket
    (`unix:PATH`) is left to gRPC, whose bind fails by itself when the path is taken."""
    if listen.startswith("unix:"):
        return 0
    host, port, family = split_listen(listen)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise AddressInUseError(
                    f"cannot listen on {listen}: address already in use (another hashsvc "
                    "serve, or another program, is listening there)") from None
            raise HashsvcError(f"cannot listen on {listen}: {err.strerror}") from None
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def reserve_port(listen: str) -> Iterator[tuple[str, int]]:
    """Hold `listen`'s port (bound with SO_REUSEPORT, never listened on) while workers bind it,
    so port 0 resolves to one concrete port that every worker then binds.

    The reservation has no SO_REUSEADDR, so another server's probe fails against it from the
    moment it is bound until the workers listen and beyond."""
    host, _, family = split_listen(listen)
    port = refuse_if_in_use(listen)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        try:
            sock.bind((host, port))
        except OSError as err:  # taken between the probe and here
            raise AddressInUseError(f"cannot listen on {listen}: {err.strerror}") from None
        yield listen.rpartition(":")[0], port
    finally:
        sock.close()
