"""The HTTP/JSON API against the real server: the same answers as gRPC, as canonical JSON, and
errors as problem documents naming the gRPC status."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format
from hashsvc_client import Client
from hashsvc_client.v1 import scan_pb2
from PIL import Image

from hashsvc.config import ServerConfig
from tests.http_client import http
from tests.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("http-home")
    with ServerProcess(home) as process:
        yield process


def _base(server: ServerProcess) -> str:
    assert server.http_port is not None, "the HTTP API is on by default in the all role"
    return f"http://127.0.0.1:{server.http_port}"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(out, "JPEG", quality=90)
    return out.getvalue()


def test_hash_image_over_http_is_the_grpc_answer_as_canonical_json(server: ServerProcess) -> None:
    image = _jpeg()
    answer = http(_base(server), "POST", "/v1/hash/image", key=server.keys["scanner"],
                  body=image, content_type="image/jpeg")
    assert answer.status == 200, answer.body
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        expected = scan_pb2.HashImageResponse(hashes=client.hash_image(image))
    assert answer.json()["hashes"] == json_format.MessageToDict(expected)["hashes"]


def test_a_call_without_a_key_is_a_401_problem_naming_unauthenticated(
        server: ServerProcess) -> None:
    answer = http(_base(server), "POST", "/v1/scan/hashes", json_body={"hashes": []})
    assert answer.status == 401
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("/UNAUTHENTICATED") and problem["status"] == 401
    assert "Traceback" not in answer.body.decode()


def test_a_body_that_is_not_json_is_a_400_problem(server: ServerProcess) -> None:
    answer = http(_base(server), "POST", "/v1/scan/hashes", key=server.keys["scanner"],
                  body=b"{not json", content_type="application/json")
    assert answer.status == 400
    assert answer.json()["type"].endswith("/INVALID_ARGUMENT")


@pytest.mark.parametrize(("role", "flag", "expected"), [
    ("scan", "auto", ""), ("admin", "auto", "0.0.0.0:8080"), ("all", "auto", "0.0.0.0:8080"),
    ("scan", "127.0.0.1:0", "127.0.0.1:0"), ("all", "off", ""), ("all", "", ""),
])
def test_the_http_api_is_off_on_scan_replicas_unless_asked(
        tmp_path: Path, role: str, flag: str, expected: str) -> None:
    config = ServerConfig(home=tmp_path, role=role, http_listen=flag)
    assert config.resolved_http_listen == expected
