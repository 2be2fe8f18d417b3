"""The HTTP/JSON API against the real server: the same answers as gRPC, as canonical JSON, and
every refusal as a problem document with the precise HTTP status, naming what was wrong."""

from __future__ import annotations

import io
import socket
import uuid
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from google.protobuf import json_format
from hashsvc_client import Client
from hashsvc_client.v1 import scan_pb2
from PIL import Image

from hashsvc.config import ServerConfig
from tests.conftest import BRIDGE_ORIGINAL
from tests.http_client import HttpAnswer, http
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank

BRIDGE = BRIDGE_ORIGINAL.read_bytes()
BRIDGE_HEX = BRIDGE_PDQ.hex()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("http-home")
    _seed_bridge_bank(home)
    with ServerProcess(home, "--max-image-bytes", "2000000") as process:
        yield process


def _base(server: ServerProcess) -> str:
    assert server.http_port is not None, "the HTTP API is on by default in the all role"
    return f"http://127.0.0.1:{server.http_port}"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _problem(answer: HttpAnswer, status: int, code: str) -> str:
    """The problem document's detail, after checking it is one for `status` and gRPC `code`."""
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == f"tag:hashsvc,2026:grpc-status/{code}", problem
    assert problem["status"] == status
    assert "Traceback" not in answer.body.decode()
    detail: str = problem["detail"]
    return detail


def _multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    """A form; the fields `image` and `file` are sent as files, the others as text."""
    boundary = uuid.uuid4().hex
    file = b'; filename="upload.jpg"\r\nContent-Type: image/jpeg'
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n%s\r\n" % (
            boundary.encode(), name.encode(), file if name in ("image", "file") else b"",
            value) for name, value in fields.items()) + b"--%s--\r\n" % boundary.encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_hash_image_over_http_is_the_grpc_answer_as_canonical_json(server: ServerProcess) -> None:
    image = _jpeg()
    answer = http(_base(server), "POST", "/v1/hash/image", key=server.keys["scanner"],
                  body=image, content_type="image/jpeg")
    assert answer.status == 200, answer.body
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        expected = scan_pb2.HashImageResponse(hashes=client.hash_image(image))
    assert answer.json()["hashes"] == json_format.MessageToDict(
        expected, always_print_fields_with_no_presence=True)["hashes"]


@pytest.mark.parametrize("upload", ["raw", "octet-stream", "multipart"])
def test_scan_image_matches_by_raw_body_or_multipart_form(server: ServerProcess,
                                                          upload: str) -> None:
    if upload == "multipart":
        body, content_type = _multipart({"image": BRIDGE, "requestId": b"form-1"})
        path = "/v1/scan/image"
    else:
        body = BRIDGE
        content_type = "image/jpeg" if upload == "raw" else "application/octet-stream"
        path = "/v1/scan/image?requestId=form-1"
    answer = http(_base(server), "POST", path, key=server.keys["scanner"], body=body,
                  content_type=content_type)
    assert answer.status == 200, answer.body
    result = answer.json()["result"]
    assert result["matched"] is True and result["requestId"] == "form-1"
    assert [m["externalId"] for m in result["matches"]] == ["bridge-orig"]


def test_scan_options_come_from_query_parameters(server: ServerProcess) -> None:
    """`options.banks` restricts the banks as over gRPC: an unknown bank is NOT_FOUND."""
    answer = http(_base(server), "POST", "/v1/scan/image?options.banks=nope",
                  key=server.keys["scanner"], body=BRIDGE, content_type="image/jpeg")
    assert "nope" in _problem(answer, 404, "NOT_FOUND")
    answer = http(_base(server), "POST", "/v1/scan/image?options.banks=bridge"
                  "&options.disableDihedral=true", key=server.keys["scanner"], body=BRIDGE,
                  content_type="image/jpeg")
    assert answer.status == 200 and answer.json()["result"]["matched"] is True


def test_scan_hashes_matches_and_int64_fields_are_canonical_json_strings(
        server: ServerProcess) -> None:
    answer = http(_base(server), "POST", "/v1/scan/hashes", key=server.keys["scanner"],
                  json_body={"hashes": [{"algorithm": "ALGORITHM_PDQ", "hex": BRIDGE_HEX}]})
    assert answer.status == 200, answer.body
    match = answer.json()["result"]["matches"][0]
    assert match["bank"] == "bridge" and isinstance(match["entryId"], str)


def test_a_call_without_a_key_is_a_401_problem_naming_unauthenticated(
        server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer not-a-key"}):
        answer = http(_base(server), "POST", "/v1/scan/hashes", json_body={"hashes": []},
                      headers=headers)
        _problem(answer, 401, "UNAUTHENTICATED")
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_scan_key_on_an_admin_route_is_403(server: ServerProcess) -> None:
    answer = http(_base(server), "GET", "/v1/banks", key=server.keys["scanner"])
    assert "'admin' role" in _problem(answer, 403, "PERMISSION_DENIED")


@pytest.mark.parametrize(("body", "named"), [
    (b"{not json", "not JSON"),
    (b'{"hashes": [], "colour": 1}', "colour"),
    (b'{"hashes": "pdq"}', "hashes"),
    (b'{"hashes": [{"algorithm": "ALGORITHM_NOPE"}]}', "ALGORITHM_NOPE"),
    (b"[]", "not a JSON object"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"hashes": [], "options": %s1%s}' % (b'{"a":' * 5_000, b"}" * 5_000), "nested too deeply"),
])
def test_unreadable_json_is_a_400_naming_what_is_wrong(server: ServerProcess, body: bytes,
                                                       named: str) -> None:
    answer = http(_base(server), "POST", "/v1/scan/hashes", key=server.keys["scanner"],
                  body=body, content_type="application/json")
    assert named in _problem(answer, 400, "INVALID_ARGUMENT")


def test_unknown_or_malformed_query_parameters_are_400(server: ServerProcess) -> None:
    key = server.keys["admin"]
    for path, named in (("/v1/entries?colour=red", "'colour'"),
                        ("/v1/entries?disabled=maybe", "true or false"),
                        ("/v1/entries?pageSize=lots", "page_size"),
                        ("/v1/entries?hash=abc", "hash.<field>"),
                        ("/v1/scan/hashes?x=1", "JSON body")):
        method = "POST" if "scan" in path else "GET"
        answer = http(_base(server), method, path, key=key, json_body={} if method == "POST"
                      else None)
        assert named in _problem(answer, 400, "INVALID_ARGUMENT"), path


def test_the_services_invalid_argument_is_422(server: ServerProcess) -> None:
    key = server.keys["scanner"]
    answer = http(_base(server), "POST", "/v1/scan/image", key=key, body=b"not an image",
                  content_type="image/png")
    _problem(answer, 422, "INVALID_ARGUMENT")
    answer = http(_base(server), "POST", "/v1/scan/hashes", key=key,
                  json_body={"hashes": [{"algorithm": "ALGORITHM_PDQ", "hex": "abc"}]})
    assert "hex" in _problem(answer, 422, "INVALID_ARGUMENT")


@pytest.mark.parametrize(("path", "content_type", "wanted"), [
    ("/v1/scan/image", "application/json", "image/*"),
    ("/v1/scan/image", "application/x-www-form-urlencoded", "curl"),
    ("/v1/hash/image", "text/plain", "image/*"),
    ("/v1/scan/hashes", "image/jpeg", "application/json"),
    ("/v1/scan/hashes", "application/x-www-form-urlencoded", "curl"),
])
def test_a_wrong_content_type_is_415(server: ServerProcess, path: str, content_type: str,
                                     wanted: str) -> None:
    answer = http(_base(server), "POST", path, key=server.keys["scanner"], body=b"{}",
                  content_type=content_type)
    assert wanted in _problem(answer, 415, "INVALID_ARGUMENT")


def test_a_multipart_form_without_the_image_field_is_400(server: ServerProcess) -> None:
    body, content_type = _multipart({"file": BRIDGE})
    answer = http(_base(server), "POST", "/v1/scan/image", key=server.keys["scanner"],
                  body=body, content_type=content_type)
    assert "'image'" in _problem(answer, 400, "INVALID_ARGUMENT")


def test_a_body_over_the_limit_is_413_by_content_length_before_it_is_read(
        server: ServerProcess) -> None:
    """The server answers after the headers alone: nothing of the body is ever sent."""
    connection = HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.putrequest("POST", "/v1/scan/image")
    connection.putheader("Authorization", f"Bearer {server.keys['scanner']}")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(50_000_000))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert "over" in response.read().decode()
    connection.close()


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(server: ServerProcess) -> None:
    """Chunks up to the limit (2 MB + 1 MiB), then one byte more, and no end: the 413 comes
    while the body streams. The client sends nothing the server does not read, so the answer
    cannot be lost to a reset."""
    limit = 2_000_000 + (1 << 20)
    connection = socket.create_connection(("127.0.0.1", server.http_port), timeout=60)
    connection.sendall(b"POST /v1/scan/image HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg"
                       b"\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                       % server.keys["scanner"].encode())
    piece = 100_000
    for size in [piece] * (limit // piece) + [limit % piece, 1]:
        connection.sendall(b"%x\r\n%s\r\n" % (size, b"\0" * size))
    with connection.makefile("rb") as answer:
        assert answer.readline().split()[1] == b"413"
    connection.close()


def test_an_unknown_path_is_a_404_problem_and_a_wrong_method_405_with_allow(
        server: ServerProcess) -> None:
    _problem(http(_base(server), "GET", "/v1/nothing-here"), 404, "NOT_FOUND")
    answer = http(_base(server), "DELETE", "/v1/banks", key=server.keys["admin"])
    _problem(answer, 405, "UNIMPLEMENTED")
    assert set(answer.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    answer = http(_base(server), "GET", "/v1/scan/hashes")
    assert "POST" in answer.headers["allow"]


def test_refusals_of_the_http_layer_are_counted_by_reason(server: ServerProcess) -> None:
    from tests.test_observability import _samples, _value

    before = _samples(server.scrape())
    http(_base(server), "GET", "/v1/nothing-here")
    http(_base(server), "POST", "/v1/scan/hashes", body=b"{", content_type="application/json")
    http(_base(server), "POST", "/v1/scan/image", body=b"{}", content_type="application/json")
    after = _samples(server.scrape())
    for reason in ("not_found", "bad_request", "media_type"):
        assert _value(after, "hashsvc_http_refused_total", reason=reason) == \
            _value(before, "hashsvc_http_refused_total", reason=reason) + 1, reason


@pytest.mark.parametrize(("role", "flag", "expected"), [
    ("scan", "auto", ""), ("admin", "auto", "0.0.0.0:8080"), ("all", "auto", "0.0.0.0:8080"),
    ("scan", "127.0.0.1:0", "127.0.0.1:0"), ("all", "off", ""), ("all", "", ""),
])
def test_the_http_api_is_off_on_scan_replicas_unless_asked(
        tmp_path: Path, role: str, flag: str, expected: str) -> None:
    config = ServerConfig(home=tmp_path, role=role, http_listen=flag)
    assert config.resolved_http_listen == expected


def test_a_scan_replica_asked_for_http_scans_and_has_no_admin_routes_or_console(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--role", "scan") as replica:
        base = _base(replica)
        answer = http(base, "POST", "/v1/scan/hashes", key=replica.keys["scanner"],
                      json_body={"hashes": [{"algorithm": "ALGORITHM_PDQ", "hex": BRIDGE_HEX}]})
        assert answer.status == 200 and answer.json()["result"]["matched"] is True
        # The admin routes exist in the table, but no AdminService answers them here.
        _problem(http(base, "GET", "/v1/banks", key=replica.keys["admin"]), 404,
                 "UNIMPLEMENTED")
        _problem(http(base, "GET", "/console/"), 404, "NOT_FOUND")


def test_every_rpc_but_the_bidirectional_stream_has_exactly_one_route_of_its_types() -> None:
    """The table matches the services: a new RPC without a route, or a row whose types or
    streaming differ from the proto's, fails here."""
    from hashsvc_client.v1 import admin_pb2, replica_pb2, scan_pb2

    from hashsvc.http.routes import ROUTES, Route

    by_rpc: dict[tuple[str, str], Route] = {(route.service, route.rpc): route for route in ROUTES}
    assert len(by_rpc) == len(ROUTES), "an RPC has two routes"
    expected = set()
    for service, module in (("scan", scan_pb2), ("admin", admin_pb2), ("replica", replica_pb2)):
        for method in module.DESCRIPTOR.services_by_name[
                f"{service.capitalize()}Service"].methods:
            if method.client_streaming and method.server_streaming:
                continue  # ScanImages: bulk scanning is gRPC's (README "HTTP/JSON API")
            expected.add((service, method.name))
            route = by_rpc.get((service, method.name))
            assert route is not None, f"no route for {method.full_name}"
            assert route.request.DESCRIPTOR.full_name == method.input_type.full_name
            assert route.response.DESCRIPTOR.full_name == method.output_type.full_name
            assert route.streaming == method.client_streaming, method.full_name
            for param in route.path_params:
                assert route.field_of(param) in route.request.DESCRIPTOR.fields_by_name
    assert set(by_rpc) == expected


@pytest.mark.parametrize("key", ["k\u00e9y", "a\x01b"])
def test_a_key_with_characters_no_key_has_is_a_401_not_a_500(server: ServerProcess,
                                                             key: str) -> None:
    """gRPC refuses such metadata in the client: before the check this was a 500."""
    answer = http(_base(server), "GET", "/v1/banks", headers={"Authorization": f"Bearer {key}"})
    assert answer.status == 401, answer.body
    assert answer.json()["type"].endswith("/UNAUTHENTICATED")
    assert key not in answer.body.decode("utf-8", "replace")
