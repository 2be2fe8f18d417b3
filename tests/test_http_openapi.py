"""The OpenAPI document: fresh (as CI checks it), valid OpenAPI 3.1, a faithful account of
protobuf's JSON mapping, served without a key, and true of what the real server answers: real
responses and problem documents validate against its schemas, and a wrong one does not."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hashsvc_client.v1 import admin_pb2, scan_pb2
from jsonschema import Draft202012Validator, ValidationError
from openapi_spec_validator import validate

from hashsvc.http import openapi
from hashsvc.http.routes import ROUTES, Route
from loadtests.loadgen import default_photo, make_jpeg
from loadtests.make_snapshot import build_home
from tests.http_client import http
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(openapi.DOCUMENT.read_text())
    return loaded


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A home with the listed photo (make_snapshot's), so that a scan of it matches."""
    home = tmp_path_factory.mktemp("openapi-home")
    build_home(home, 100)
    with ServerProcess(home) as process:
        yield process


def _base(server: ServerProcess) -> str:
    assert server.http_port is not None
    return f"http://127.0.0.1:{server.http_port}"


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema` (usually a `$ref` into the document's components)."""
    return Draft202012Validator({**schema, "components": document["components"]},
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def _response_schema(document: dict[str, Any], path: str, method: str,
                     status: int) -> dict[str, Any]:
    """What the document promises `method path` answers with `status`."""
    responses = document["paths"][path][method]["responses"]
    response = responses.get(str(status), responses["default"])
    if "$ref" in response:
        response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    (media,) = response["content"].values()
    schema: dict[str, Any] = media["schema"]
    return schema


# --- the document itself ----------------------------------------------------------------------


def test_the_checked_in_document_is_what_the_routes_and_protos_make() -> None:
    """What CI runs (.ci/run); a stale copy is refused."""
    check = subprocess.run([sys.executable, "-m", "hashsvc.http.openapi", "--check"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    assert "up to date" in check.stdout


def test_a_stale_document_fails_the_check(tmp_path: Path) -> None:
    stale = tmp_path / "openapi.json"
    document = json.loads(openapi.DOCUMENT.read_text())
    del document["paths"]["/v1/scan/image"]
    stale.write_text(openapi.render(document))
    assert not openapi.is_fresh(stale)
    assert not openapi.is_fresh(tmp_path / "missing.json")


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # raises on any error
    assert document["openapi"] == "3.1.0"
    broken = copy.deepcopy(document)
    broken["paths"]["/v1/scan/image"]["post"]["responses"]["200"] = {"content": {}}
    with pytest.raises(Exception, match="description"):
        validate(broken)  # the validator does catch a broken document


def test_a_route_that_is_not_its_rpc_is_refused() -> None:
    with pytest.raises(ValueError, match="ScanHashes is"):
        openapi.build_document([Route("POST", "/v1/x", "scan", "ScanHashes",
                                      scan_pb2.ScanImageRequest, scan_pb2.ScanHashesResponse)])
    with pytest.raises(ValueError, match="has no method Nothing"):
        openapi.build_document([Route("POST", "/v1/x", "admin", "Nothing",
                                      scan_pb2.ScanImageRequest, scan_pb2.ScanHashesResponse)])


def test_the_document_has_the_projects_version(document: dict[str, Any]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert document["info"]["version"] == project["version"]


def test_every_route_is_an_operation_with_its_messages(document: dict[str, Any]) -> None:
    operations = {(path, method): operation for path, item in document["paths"].items()
                  for method, operation in item.items()}
    assert len(operations) == len(ROUTES)
    for route in ROUTES:
        operation = operations[(route.path, route.http_method.lower())]
        assert operation["operationId"] == route.operation_id
        assert route.rpc in operation["description"]
        assert _response_schema(document, route.path, route.http_method.lower(), 200) == {
            "$ref": f"#/components/schemas/{route.response.DESCRIPTOR.full_name}"}
        for status in (401, 403, 429):
            assert _response_schema(document, route.path, route.http_method.lower(),
                                    status) == {"$ref": "#/components/schemas/Problem"}
    upload = operations[("/v1/scan/image", "post")]["requestBody"]["content"]
    assert {"image/*", "multipart/form-data"} <= set(upload)
    query = [p["name"] for p in operations[("/v1/scan/image", "post")]["parameters"]]
    assert "requestId" in query and "image" not in query
    assert document["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"]
    assert document["security"] == [{"bearerKey": []}]
    assert document["components"]["securitySchemes"]["bearerKey"]["scheme"] == "bearer"


def test_descriptions_are_the_proto_comments(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "never stored or logged" in document["paths"]["/v1/scan/image"]["post"]["description"]
    tags = {tag["name"]: tag["description"] for tag in document["tags"]}
    assert "Role required: `scan`" in tags["ScanService"]  # the comment opening scan.proto
    assert schemas["hashsvc.v1.Match"]["properties"]["distance"]["description"] == \
        "Hamming distance in bits; 0 for exact kinds"
    assert "- `ALGORITHM_PDQ`: Meta's PDQ" in schemas["hashsvc.v1.Algorithm"]["description"]
    # A comment over several lines is one paragraph.
    assert "match through one of them reports it as Match.query_transform" in \
        schemas["hashsvc.v1.Hash"]["properties"]["transform"]["description"]


def test_schemas_follow_protobufs_json_mapping() -> None:
    """Every kind of field, on messages the generator is asked for generically (a route the
    table may not have yet: it must not matter which rows the table holds)."""
    routes = [Route("PATCH", "/v1/banks/{name}", "admin", "UpdateBank",
                    admin_pb2.UpdateBankRequest, admin_pb2.UpdateBankResponse),
              Route("POST", "/v1/scan/hashes", "scan", "ScanHashes", scan_pb2.ScanHashesRequest,
                    scan_pb2.ScanHashesResponse),
              Route("GET", "/v1/entries", "admin", "ListEntries", admin_pb2.ListEntriesRequest,
                    admin_pb2.ListEntriesResponse, body="query")]
    document = openapi.build_document(routes, {})
    validate(document)
    schemas = document["components"]["schemas"]
    bank = schemas["hashsvc.v1.Bank"]["properties"]
    assert bank["entryCount"]["type"] == "string" and bank["entryCount"]["format"] == "int64"
    assert bank["thresholds"] == {"type": "object", "propertyNames": {},
                                  "additionalProperties": {"type": "integer", "format": "int32",
                                                           "minimum": -(2**31),
                                                           "maximum": 2**31 - 1}}
    assert bank["tags"] == {"type": "array", "items": {"type": "string"}}
    assert bank["kind"] == {"$ref": "#/components/schemas/hashsvc.v1.BankKind"}
    assert schemas["hashsvc.v1.BankKind"]["enum"][:2] == ["BANK_KIND_UNSPECIFIED",
                                                         "BANK_KIND_MATCH"]
    assert schemas["hashsvc.v1.UpdateBankRequest"]["properties"]["updateMask"] == {
        "$ref": "#/components/schemas/google.protobuf.FieldMask"}
    assert schemas["google.protobuf.FieldMask"]["type"] == "string"
    assert schemas["google.protobuf.Struct"]["type"] == "object"
    hash_ = schemas["hashsvc.v1.Hash"]
    assert hash_["properties"]["raw"]["contentEncoding"] == "base64"
    assert hash_["allOf"] == [{"not": {"required": ["hex", "raw"]}}]  # the oneof `value`
    assert "Optional" in hash_["properties"]["quality"]["description"]  # proto3 `optional`
    match = schemas["hashsvc.v1.Match"]["properties"]
    assert match["falseMatchProbability"]["format"] == "double"
    assert match["metadata"] == {"$ref": "#/components/schemas/google.protobuf.Struct"}
    (parameter,) = document["paths"]["/v1/banks/{name}"]["patch"]["parameters"]
    assert parameter == {"name": "name", "in": "path", "required": True,
                         "schema": {"type": "string"}}
    # Query parameters: a nested field by its dotted path, a repeated one as an array.
    query = {p["name"]: p for p in document["paths"]["/v1/entries"]["get"]["parameters"]}
    assert query["banks"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["hash.hex"]["schema"] == {"type": "string"}
    assert query["pageSize"]["in"] == "query" and not query["pageSize"]["required"]
    assert "requestBody" not in document["paths"]["/v1/entries"]["get"]
    # Checked by JSON Schema itself: both hex and raw is refused, one of them is fine.
    hashes = _validator(document, {"$ref": "#/components/schemas/hashsvc.v1.Hash"})
    assert hashes.is_valid({"algorithm": "ALGORITHM_PDQ", "hex": "ab"})
    assert not hashes.is_valid({"algorithm": "ALGORITHM_PDQ", "hex": "ab", "raw": "qw=="})
    assert not hashes.is_valid({"algorithm": 1})  # enums are names
    assert not hashes.is_valid({"hex_value": "ab"})  # unknown fields are refused


# --- true of the real server ------------------------------------------------------------------


def test_the_document_is_served_without_a_key(server: ServerProcess) -> None:
    answer = http(_base(server), "GET", openapi.SERVED_AT)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == openapi.DOCUMENT.read_bytes()


def test_real_answers_validate_against_the_schemas(server: ServerProcess,
                                                   document: dict[str, Any]) -> None:
    base, scanner = _base(server), server.keys["scanner"]
    image = make_jpeg(default_photo(), 1.0).data
    scan = http(base, "POST", "/v1/scan/image?requestId=openapi-1", key=scanner, body=image,
                content_type="image/jpeg")
    assert scan.status == 200, scan.body
    result = scan.json()["result"]
    assert result["matched"] and result["requestId"] == "openapi-1"
    assert isinstance(result["matches"][0]["entryId"], str)  # int64: a string
    scans = _validator(document, _response_schema(document, "/v1/scan/image", "post", 200))
    scans.validate(scan.json())

    hashed = http(base, "POST", "/v1/hash/image", key=scanner, body=image,
                  content_type="image/jpeg")
    _validator(document, _response_schema(document, "/v1/hash/image", "post", 200)).validate(
        hashed.json())
    pdq = next(h["hex"] for h in hashed.json()["hashes"] if h["algorithm"] == "ALGORITHM_PDQ")
    by_hash = http(base, "POST", "/v1/scan/hashes", key=scanner,
                   json_body={"hashes": [{"algorithm": "ALGORITHM_PDQ", "hex": pdq}]})
    assert by_hash.json()["result"]["matched"]
    _validator(document, _response_schema(document, "/v1/scan/hashes", "post", 200)).validate(
        by_hash.json())
    banks = http(base, "GET", "/v1/banks", key=server.keys["admin"])
    assert banks.json()["banks"][0]["entryCount"] == "101"
    _validator(document, _response_schema(document, "/v1/banks", "get", 200)).validate(
        banks.json())

    # A schema that lied would be caught: the same answer with an int64 as a number, or a
    # field the messages do not have, fails.
    wrong = copy.deepcopy(scan.json())
    wrong["result"]["matches"][0]["entryId"] = 7
    with pytest.raises(ValidationError):
        scans.validate(wrong)
    wrong = copy.deepcopy(scan.json())
    wrong["result"]["matches"][0]["entry_id"] = wrong["result"]["matches"][0].pop("entryId")
    with pytest.raises(ValidationError):
        scans.validate(wrong)


@pytest.mark.parametrize(("method", "path", "key", "body", "content_type", "status"), [
    ("POST", "/v1/scan/hashes", None, b"{}", "application/json", 401),
    ("GET", "/v1/banks", "scanner", None, None, 403),
    ("POST", "/v1/scan/hashes", "scanner", b"{not json", "application/json", 400),
    ("POST", "/v1/scan/hashes", "scanner", b'{"hashes": [{"algorithm": "ALGORITHM_PDQ", '
     b'"hex": "zz"}]}', "application/json", 422),
    ("POST", "/v1/scan/image", "scanner", b"not an image", "image/jpeg", 422),
])
def test_problem_documents_validate_against_the_problem_schema(
        server: ServerProcess, document: dict[str, Any], method: str, path: str,
        key: str | None, body: bytes | None, content_type: str | None, status: int) -> None:
    answer = http(_base(server), method, path, key=server.keys[key] if key else None, body=body,
                  content_type=content_type)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/problem+json"
    operation = document["paths"][path][method.lower()]
    assert str(status) in operation["responses"]  # the document lists what the server answers
    _validator(document, _response_schema(document, path, method.lower(), status)).validate(
        answer.json())
