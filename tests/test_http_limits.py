"""The HTTP/JSON API under the server's own limits, metrics and audit, against the real server:
an admission refusal is a 429 counted like a gRPC one, a refusal for pixels is a 422 that
leaves nothing behind, and every call is labelled by protocol."""

from __future__ import annotations

import io
import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hashsvc_client import Client
from hashsvc_client.v1 import admin_pb2, admin_pb2_grpc
from PIL import Image

from hashsvc.http.gateway import GATEWAY_MARK_METADATA, HTTP_PEER_METADATA
from tests.http_client import http
from tests.server_process import ServerProcess
from tests.test_admission import HeldStream
from tests.test_http_api import _jpeg, _problem
from tests.test_observability import _samples, _value
from tests.test_server import _seed_bridge_bank

ROOT = Path(__file__).resolve().parent.parent


def _small_jpeg() -> bytes:
    """160x120: under the module server's 40,000-pixel cap."""
    out = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((160, 120)).save(out, "JPEG")
    return out.getvalue()


SMALL = _small_jpeg()


@pytest.fixture(scope="module")
def tmpdir_of_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           tmpdir_of_server: Path) -> Iterator[ServerProcess]:
    """Two admission slots; images up to 40,000 pixels; the
    server's temporary files go to a directory of the test's, to see what it leaves there."""
    home = tmp_path_factory.mktemp("http-limits")
    _seed_bridge_bank(home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmpdir_of_server))
        process = ServerProcess(home, "--max-concurrent-rpcs", "2", "--max-image-pixels",
                                "40000", "--audit-all-scans")
    with process:
        yield process


def _base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _audit(server: ServerProcess) -> list[dict[str, object]]:
    path = server.home / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_an_admission_refusal_over_http_is_429_with_retry_after_and_counted_like_grpc(
        server: ServerProcess) -> None:
    key = server.keys["scanner"]
    before = _samples(server.scrape())
    # Both slots held by open gRPC streams: the HTTP call is refused whatever the timing.
    with grpc.insecure_channel(server.target) as channel:
        held = [HeldStream(channel, key).open() for _ in range(2)]
        answer = http(_base(server), "POST", "/v1/scan/image", key=key, body=SMALL,
                      content_type="image/jpeg")
        for stream in held:
            stream.close()
    assert "server overloaded" in _problem(answer, 429, "RESOURCE_EXHAUSTED")
    assert answer.headers["retry-after"] == "1"
    after = _samples(server.scrape())
    labels = {"method": "ScanImage", "code": "RESOURCE_EXHAUSTED"}
    assert _value(after, "hashsvc_requests_total", **labels, protocol="http") == \
        _value(before, "hashsvc_requests_total", **labels, protocol="http") + 1
    assert _value(after, "hashsvc_rejected_requests_total", reason="overload") == \
        _value(before, "hashsvc_rejected_requests_total", reason="overload") + 1
    # The slots are free again: the same call succeeds.
    assert http(_base(server), "POST", "/v1/scan/image", key=key, body=SMALL,
                content_type="image/jpeg").status == 200


def test_calls_are_counted_and_timed_by_protocol(server: ServerProcess) -> None:
    key = server.keys["scanner"]
    before = _samples(server.scrape())
    for _ in range(3):
        assert http(_base(server), "POST", "/v1/scan/image", key=key, body=SMALL,
                    content_type="image/jpeg").status == 200
    with Client(server.target, api_key=key) as client:
        client.scan_image(SMALL)
    after = _samples(server.scrape())
    for protocol, calls in (("http", 3), ("grpc", 1)):
        assert _value(after, "hashsvc_requests_total", method="ScanImage", code="OK",
                      protocol=protocol) == _value(before, "hashsvc_requests_total",
                                                   method="ScanImage", code="OK",
                                                   protocol=protocol) + calls, protocol
        assert _value(after, "hashsvc_request_duration_seconds_count", method="ScanImage",
                      protocol=protocol) == _value(
            before, "hashsvc_request_duration_seconds_count", method="ScanImage",
            protocol=protocol) + calls


def test_audit_records_of_http_scans_say_so_and_grpc_ones_are_unchanged(
        server: ServerProcess) -> None:
    key = server.keys["scanner"]
    assert http(_base(server), "POST", "/v1/scan/image?requestId=over-http", key=key,
                body=SMALL, content_type="image/jpeg").status == 200
    with Client(server.target, api_key=key) as client:
        client.scan_image(SMALL, request_id="over-grpc")
    records = {record["request_id"]: record for record in _audit(server)}
    assert records["over-http"]["protocol"] == "http"
    assert records["over-http"]["caller"] == "scanner"
    assert "protocol" not in records["over-grpc"]
    assert set(records["over-http"]) - {"protocol"} == set(records["over-grpc"])
    assert key not in (server.home / "audit.jsonl").read_text()


def test_an_image_refused_for_its_pixels_is_422_and_leaves_nothing_behind(
        server: ServerProcess, tmpdir_of_server: Path) -> None:
    image = _jpeg()  # 320x240: over the 40,000 pixels allowed
    home_before = sorted(path for path in server.home.rglob("*") if path.is_file())
    answer = http(_base(server), "POST", "/v1/scan/image?requestId=too-many-pixels",
                  key=server.keys["scanner"], body=image, content_type="image/jpeg")
    assert "pixels" in _problem(answer, 422, "INVALID_ARGUMENT")
    assert "too-many-pixels" not in [record["request_id"] for record in _audit(server)]
    home_after = sorted(path for path in server.home.rglob("*") if path.is_file())
    assert home_after == home_before
    # The only things of the server's in its temporary directory: the gateway's socket and mark.
    left = [path for path in tmpdir_of_server.rglob("*") if not path.is_dir()]
    assert all(path.name in ("grpc.sock", "mark") for path in left), left
    assert all(image not in path.read_bytes() for path in server.home.rglob("*")
               if path.is_file() and os.access(path, os.R_OK))


def test_dashboards_group_the_request_metrics_by_protocol() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "hashsvc-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
                   if "hashsvc_request" in target["expr"]
                   and "in_flight" not in target["expr"]]
    assert expressions and all("protocol" in expression for expression in expressions)


def test_stream_limits_count_each_http_client_not_the_gateways_one_connection(
        tmp_path: Path) -> None:
    """Streams opened through the gateway's socket as three HTTP clients would be: with one
    stream per connection and two per key, the one refused is refused for the key. Were every
    HTTP client one connection (the gateway's), the second stream counted would be refused
    for the connection instead."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path))
        server = ServerProcess(home, "--max-streams-per-key", "2",
                               "--max-streams-per-connection", "1")
    with server:
        (socket_path,) = tmp_path.glob("hashsvc-gateway-*/grpc.sock")
        mark = (socket_path.parent / "mark").read_text()  # as the gateway, which is trusted
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            calls, outboxes = _streams_as_http_clients(channel, server.keys["admin"], mark, 3)
            _one_refused_then_the_rest_done(calls, outboxes, "max_streams_per_key")


def test_a_grpc_client_on_a_unix_listen_socket_does_not_pass_for_the_http_gateway(
        tmp_path: Path) -> None:
    """With --listen unix:PATH every local client reaches the gRPC port over a Unix socket, as
    the gateway does. Without the gateway's mark, such a client's calls are gRPC calls, and the
    HTTP client addresses it claims are ignored: its streams share its one connection's limit."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    listen = tmp_path / "grpc.sock"
    with ServerProcess(home, "--listen", f"unix:{listen}", "--max-streams-per-key", "3",
                       "--max-streams-per-connection", "1") as server, \
            grpc.insecure_channel(f"unix:{listen}") as channel:
        calls, outboxes = _streams_as_http_clients(channel, server.keys["admin"], "a-guess", 2)
        _one_refused_then_the_rest_done(calls, outboxes, "max_streams_per_connection")
        samples = _samples(server.scrape())
        assert _value(samples, "hashsvc_requests_total", method="AddEntries", protocol="grpc") == 2
        assert _value(samples, "hashsvc_requests_total", method="AddEntries", protocol="http") == 0


def _streams_as_http_clients(channel: grpc.Channel, key: str, mark: str,
                             count: int) -> tuple[list[Any], list[Any]]:
    """`count` AddEntries streams held open (until None is put in their outboxes), each sent
    with `mark` as the gateway's and claiming a different HTTP client address."""
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    outboxes: list[queue.Queue[admin_pb2.AddEntriesRequest | None]] = []
    calls = []
    for client in range(count):
        outbox: queue.Queue[admin_pb2.AddEntriesRequest | None] = queue.Queue()
        outbox.put(admin_pb2.AddEntriesRequest(bank="bridge"))
        outboxes.append(outbox)
        calls.append(stub.AddEntries.future(iter(outbox.get, None), timeout=120, metadata=(
            ("authorization", f"Bearer {key}"), (GATEWAY_MARK_METADATA, mark),
            (HTTP_PEER_METADATA, f"192.0.2.{client}:4000"))))
    return calls, outboxes


def _one_refused_then_the_rest_done(calls: list[Any], outboxes: list[Any], limit: str) -> None:
    """Wait for one stream of `calls` to be refused naming `limit`; then end the others, OK."""
    deadline = time.monotonic() + 60  # a hang guard: a refusal comes at once
    while not any(call.done() for call in calls):
        assert time.monotonic() < deadline, "no stream was refused"
        time.sleep(0.05)
    refused = [call for call in calls if call.done()]
    for call in refused:
        assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limit in call.details(), call.details()
    for outbox in outboxes:
        outbox.put(None)
    assert [call.code() for call in calls].count(grpc.StatusCode.OK) == len(calls) - 1
