"""How the HTTP port is served, against the real server: HTTPS with the gRPC port's certificate
(and client certificates with --tls-client-ca), several workers on one port, slow clients
bounded, and a graceful drain on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from pathlib import Path

import pytest

from tests.http_client import http
from tests.server_process import ServerProcess
from tests.test_http_api import BRIDGE_HEX, _problem
from tests.test_observability import _samples, _value
from tests.test_server import _seed_bridge_bank
from tests.tls_certs import make_pki

SCAN = json.dumps({"hashes": [{"algorithm": "ALGORITHM_PDQ", "hex": BRIDGE_HEX}]}).encode()


class HeldRequest:
    """A ScanHashes request whose body is held back after the server asked for it: sent with
    `Expect: 100-continue`, so the server's `100 Continue` proves the request is in progress
    (its handler is reading the body), whatever the timing."""

    def __init__(self, port: int, key: str, body: bytes = SCAN) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.sendall(
            b"POST /v1/scan/hashes HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
            % (key.encode(), len(body)))
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"HTTP/1.1 100"), "no 100 Continue"
        assert self.reader.readline() == b"\r\n"

    def finish(self, body: bytes | None = None) -> tuple[int, bytes]:
        """Send the body (or `body`), and the status and body of the answer."""
        self.sock.sendall(self.body if body is None else body)
        return self.answer()

    def answer(self) -> tuple[int, bytes]:
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        answer = self.reader.read(length)
        self.reader.close()
        self.sock.close()
        return status, answer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One admission slot, so two HTTP requests in progress fill the HTTP layer's cap."""
    home = tmp_path_factory.mktemp("http-serving")
    _seed_bridge_bank(home)
    with ServerProcess(home, "--max-concurrent-rpcs", "1", "--client-idle-timeout",
                       "1") as process:
        yield process


def test_a_body_that_stops_arriving_gets_408(server: ServerProcess) -> None:
    assert server.http_port is not None
    held = HeldRequest(server.http_port, server.keys["scanner"])
    held.sock.sendall(SCAN[:10])  # and nothing more: the server gives up after 1 s
    status, body = held.answer()
    assert status == 408
    assert "--client-idle-timeout" in json.loads(body)["detail"]


def test_a_client_gone_mid_body_is_counted_not_logged_as_an_error(server: ServerProcess) -> None:
    assert server.http_port is not None
    before = _value(_samples(server.scrape()), "hashsvc_http_refused_total",
                    reason="disconnected")
    held = HeldRequest(server.http_port, server.keys["scanner"])
    held.sock.sendall(SCAN[:10])
    held.reader.close()
    held.sock.close()
    deadline = time.monotonic() + 60  # a hang guard: the server notices at once
    while _value(_samples(server.scrape()), "hashsvc_http_refused_total",
                 reason="disconnected") == before:
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.05)
    assert "HTTP request failed" not in server.log
    assert "Traceback" not in server.log


@pytest.mark.parametrize("sent", [b"", b"POST /v1/scan/hashes HTTP/1.1\r\nHost: te"])
def test_a_connection_whose_headers_do_not_arrive_is_closed(server: ServerProcess,
                                                            sent: bytes) -> None:
    """Nothing, or headers that stop half-way (slowloris): closed after --client-idle-timeout
    (1 s here), without an answer. The socket timeout is only a hang guard."""
    assert server.http_port is not None
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as connection:
        connection.sendall(sent)
        assert connection.recv(1024) == b""  # closed by the server


def test_requests_in_progress_are_capped_at_twice_the_admission_slots(
        server: ServerProcess) -> None:
    assert server.http_port is not None
    key = server.keys["scanner"]
    held = [HeldRequest(server.http_port, key) for _ in range(2)]
    answer = http(f"http://127.0.0.1:{server.http_port}", "POST", "/v1/scan/hashes", key=key,
                  body=SCAN, content_type="application/json")
    assert "2 HTTP requests in progress" in _problem(answer, 429, "RESOURCE_EXHAUSTED")
    assert answer.headers["retry-after"] == "1"
    assert [request.finish()[0] for request in held] == [200, 200]
    assert http(f"http://127.0.0.1:{server.http_port}", "POST", "/v1/scan/hashes", key=key,
                body=SCAN, content_type="application/json").status == 200


@pytest.mark.parametrize("mutual", [False, True])
def test_the_http_port_serves_https_with_the_grpc_certificate(tmp_path: Path,
                                                              mutual: bool) -> None:
    ca, server_pem, client_pem = make_pki(tmp_path)
    flags = ["--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key)]
    if mutual:
        flags += ["--tls-client-ca", str(ca.cert)]
    home = tmp_path / "home"
    home.mkdir()
    with ServerProcess(home, *flags) as server:
        assert server.http_port is not None
        trusting = ssl.create_default_context(cafile=str(ca.cert))
        if mutual:
            # Without a client certificate the handshake (or, with TLS 1.3, the first read)
            # fails: nothing reaches the API.
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                _https_get(server.http_port, trusting, server.keys["admin"])
            trusting.load_cert_chain(str(client_pem.cert), str(client_pem.key))
        status, body = _https_get(server.http_port, trusting, server.keys["admin"])
        assert status == 200 and "banks" in json.loads(body)
        # Plain HTTP on the HTTPS port gets no API answer.
        plain = HTTPConnection("127.0.0.1", server.http_port, timeout=60)
        try:
            plain.request("GET", "/v1/banks", headers={
                "Authorization": f"Bearer {server.keys['admin']}"})
            plain_status: int | None = plain.getresponse().status
        except (OSError, HTTPException):  # closed, or a TLS alert where a status line was due
            plain_status = None
        plain.close()
        assert plain_status != 200


def _https_get(port: int, context: ssl.SSLContext, key: str) -> tuple[int, bytes]:
    connection = HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        connection.request("GET", "/v1/banks", headers={"Authorization": f"Bearer {key}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with contextlib.suppress(FileNotFoundError), table.open() as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def test_several_workers_share_the_http_port_and_each_serves_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--workers", "2") as server:
        assert server.http_port is not None
        (serving,) = [r for r in server.records() if r.get("message") == "serving"]
        listening = _listening_inodes(server.http_port)
        # Each worker has a listening socket of its own on the HTTP port (SO_REUSEPORT)...
        assert all(_socket_inodes(pid) & listening for pid in serving["pids"]), listening
        assert len(listening) >= 2
        # ...and every call succeeds, each on a new connection the kernel gives either worker.
        calls = 30
        for _ in range(calls):
            answer = http(f"http://127.0.0.1:{server.http_port}", "POST", "/v1/scan/hashes",
                          key=server.keys["scanner"], body=SCAN, content_type="application/json")
            assert answer.status == 200 and answer.json()["result"]["matched"] is True
        assert _value(_samples(server.scrape()), "hashsvc_requests_total", method="ScanHashes",
                      code="OK", protocol="http") == calls


def test_sigterm_drains_requests_in_progress_and_refuses_new_ones(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    server = ServerProcess(home)
    with server:
        assert server.http_port is not None
        held = HeldRequest(server.http_port, server.keys["scanner"])
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60  # a hang guard: the port closes at the drain's start
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.http_port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the HTTP port stayed open while draining"
            time.sleep(0.05)
        status, body = held.finish()
        assert status == 200, body
        assert json.loads(body)["result"]["matched"] is True
        assert server.stop() == 0
