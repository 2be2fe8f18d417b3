"""The OpenAPI 3.1 document of the HTTP/JSON API, made from the route table and the protos.

    python -m hashsvc.http.openapi          write hashsvc/http/openapi.json
    python -m hashsvc.http.openapi --check  exit 1 if the checked-in document is stale (CI)

Why generated: every path comes from `routes.ROUTES` (the table the endpoints are made from),
every schema from the messages' descriptors (`proto_schema.py`), every error from `problems.py`,
so the document cannot describe an API that is not there. The descriptions are the comments of
proto/hashsvc/v1/*.proto, read with protoc's source info (the generated _pb2 modules carry
none), which needs the source tree and grpcio-tools (the `dev` extra): so the document is made
here, checked in, shipped as package data, and served as it is at `GET /v1/openapi.json` (no key
needed). CI and tests/test_http_openapi.py regenerate it and fail if the two differ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from hashsvc.http.gateway import SERVICES
from hashsvc.http.problems import MEDIA_TYPE, PROBLEM_TYPE_PREFIX, RETRY_AFTER_SECONDS, TITLES
from hashsvc.http.proto_schema import COMPONENTS, WELL_KNOWN, Schema, SchemaSet
from hashsvc.http.routes import ROUTES, Route

DOCUMENT = Path(__file__).with_name("openapi.json")
SERVED_AT = "/v1/openapi.json"
PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
VERSION = "0.1.0"  # pyproject's [project] version: the document's, too
BEARER = "bearerKey"
# Statuses a route may answer besides 200 (problems.HTTP_STATUS, plus 400/413/415 from the
# HTTP side itself); 413 and 415 only where the request has a body.
ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
_BODY_ONLY = {413, 415}
_SYNTAX = 12  # FileDescriptorProto.syntax: its source-info location holds the file's header
_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?}")
_ABOUT = """\
Every operation is one gRPC method of hashsvc.v1 (named in its description), called through
the server's own gRPC services: the same keys and roles, limits, metrics and audit log.
Request and response bodies are the messages' canonical protobuf JSON (lowerCamelCase names,
64-bit integers as strings, bytes as base64, enums by name); unknown fields are refused. Errors
are RFC 9457 problem documents (`application/problem+json`) whose `type` names the gRPC status,
`tag:hashsvc,2026:grpc-status/<CODE>`."""
_ABOUT = " ".join(_ABOUT.split())  # one paragraph in the document


def build_document(routes: Sequence[Route] = ROUTES,
                   comments: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole document, as a dict (`render` writes it)."""
    comments = comments or {}
    schemas = SchemaSet(comments)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    for route in routes:
        service = descriptor_pool.Default().FindServiceByName(SERVICES[route.service])
        _check(route, service.methods_by_name.get(route.rpc))
        tags[service.name] = comments.get(service.full_name, "")
        openapi_path = _PATH_PARAM.sub(r"{\1}", route.path)
        paths.setdefault(openapi_path, {})[route.http_method.lower()] = _operation(
            route, service.name, schemas, comments)
    schemas.schemas["Problem"] = _problem_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "hashsvc HTTP/JSON API", "version": VERSION, "description": _ABOUT,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": name, **({"description": text} if text else {})}
                 for name, text in tags.items()],
        "security": [{BEARER: []}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "responses": {_response_name(status): _error_response(status)
                          for status in ERROR_STATUSES},
            "securitySchemes": {BEARER: {
                "type": "http", "scheme": "bearer",
                "description": "An API key (`hashsvc keys add NAME --role scan|admin`), sent as "
                               "`Authorization: Bearer KEY`; the method's role is required."}},
        },
    }


def _check(route: Route, method: Any) -> None:
    """A route must be its RPC as the proto declares it: a wrong row would document (and serve)
    messages the method does not take."""
    where = f"route {route.http_method} {route.path}"
    if method is None:
        raise ValueError(f"{where}: {SERVICES[route.service]} has no method {route.rpc}")
    declared = (method.input_type.full_name, method.output_type.full_name,
                method.client_streaming)
    given = (_descriptor(route.request).full_name, _descriptor(route.response).full_name,
             route.streaming)
    if declared != given or method.server_streaming:
        raise ValueError(f"{where}: {route.rpc} is {declared} (server streaming: "
                         f"{method.server_streaming}), the route says {given}")


def _operation(route: Route, service: str, schemas: SchemaSet,
               comments: Mapping[str, str]) -> dict[str, Any]:
    method = f"{SERVICES[route.service]}.{route.rpc}"
    description = "\n\n".join(filter(None, [
        comments.get(method, ""), f"gRPC: `{SERVICES[route.service]}/{route.rpc}`."]))
    operation: dict[str, Any] = {"operationId": route.operation_id, "tags": [service]}
    if route.summary:
        operation["summary"] = route.summary
    operation["description"] = description
    if route.service == "replica":
        operation["security"] = []  # public, like grpc.health: no key (README "Also served")
    descriptor = _descriptor(route.request)
    # A path parameter sets the request field of its name, or the one the route renames it to.
    renamed = dict(getattr(route, "path_fields", ()))
    path_fields = {name: renamed.get(name, name) for name in _PATH_PARAM.findall(route.path)}
    parameters = [_parameter(descriptor, name, field, "path", schemas)
                  for name, field in path_fields.items()]
    if route.body in ("query", "image"):
        parameters += _query_parameters(descriptor, {*path_fields.values(), "image"}, schemas)
    if parameters:
        operation["parameters"] = parameters
    if route.body != "query":
        operation["requestBody"] = _request_body(route, schemas)
    errors = [s for s in ERROR_STATUSES if route.body != "query" or s not in _BODY_ONLY]
    operation["responses"] = {
        "200": {"description": f"The {route.response.DESCRIPTOR.name} message, as JSON.",
                "content": {"application/json": {
                    "schema": schemas.message(_descriptor(route.response))}}},
        **{str(status): {"$ref": f"#/components/responses/{_response_name(status)}"}
           for status in errors},
        "default": {"description": "Any other failure (500, 504): a problem document.",
                    "content": {MEDIA_TYPE: {"schema": {"$ref": COMPONENTS + "Problem"}}}},
    }
    return operation


def _descriptor(message: type[Message]) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)  # the upb and Python descriptors alike


def _query_parameters(descriptor: Descriptor, skip: set[str], schemas: SchemaSet,
                      prefix: str = "") -> list[dict[str, Any]]:
    """The request's fields as query parameters: a nested one by its dotted path
    (`options.banks`), a repeated one as an array (repeat the parameter: `banks=a&banks=b`).
    Maps, and messages whose JSON is not a string (Struct), cannot be written in a query."""
    parameters: list[dict[str, Any]] = []
    for field in descriptor.fields:
        if field.name in skip or field.json_name in skip:
            continue
        nested = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        if nested is not None and (nested.GetOptions().map_entry or field.is_repeated
                                   or nested.full_name in WELL_KNOWN):
            if WELL_KNOWN.get(nested.full_name, {}).get("type") == "string":
                parameters.append(_parameter(descriptor, prefix + field.json_name, field.name,
                                             "query", schemas))
        elif nested is not None:
            if prefix.count(".") < 3:  # deep enough for any request, and no endless recursion
                parameters += _query_parameters(nested, set(), schemas,
                                                f"{prefix}{field.json_name}.")
        else:
            parameters.append(_parameter(descriptor, prefix + field.json_name, field.name,
                                         "query", schemas))
    return parameters


def _parameter(descriptor: Descriptor, name: str, field_name: str, where: str,
               schemas: SchemaSet) -> dict[str, Any]:
    field = next((f for f in descriptor.fields if field_name in (f.name, f.json_name)), None)
    parameter: dict[str, Any] = {"name": name, "in": where, "required": where == "path",
                                 "schema": schemas.field(field) if field else {"type": "string"}}
    comment = schemas.comments.get(f"{descriptor.full_name}.{field.name}") if field else None
    if comment:
        parameter["description"] = comment
    return parameter


def _request_body(route: Route, schemas: SchemaSet) -> dict[str, Any]:
    message = schemas.message(_descriptor(route.request))
    if route.body == "image":
        # The form's other fields set what query parameters set, by the same names.
        form = {parameter["name"]: parameter["schema"] for parameter in
                _query_parameters(_descriptor(route.request), {"image"}, schemas)}
        return {"required": True,
                "description": "The image: its bytes as the body (any image type), or a "
                               "multipart form with the file in the field `image` (its other "
                               "fields as the query parameters). It is decoded in memory and "
                               "never stored or logged.",
                "content": {
                    "image/*": {"schema": {"type": "string", "contentMediaType": "image/*"}},
                    "application/octet-stream": {"schema": {
                        "type": "string", "contentMediaType": "application/octet-stream"}},
                    "multipart/form-data": {
                        "schema": {"type": "object", "required": ["image"],
                                   "properties": {"image": {"type": "string",
                                                            "contentMediaType": "image/*"},
                                                  **form}},
                        "encoding": {"image": {"contentType": "image/*, "
                                                              "application/octet-stream"}}}}}
    if route.streaming:  # a client-streaming RPC: the body lists the stream's requests
        return {"required": True,
                "description": "The stream's requests in order, as an array, sent as one call, "
                               "as over gRPC; one object is a one-item stream.",
                "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": message}, message]}}}}
    return {"required": False, "description": "An empty body is the empty message.",
            "content": {"application/json": {"schema": message}}}


def _response_name(status: int) -> str:
    return TITLES[status].replace(" ", "")


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": f"{TITLES[status]}: a problem document naming the gRPC status.",
        "content": {MEDIA_TYPE: {"schema": {"$ref": COMPONENTS + "Problem"}}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": {
            "description": f"Seconds to wait before trying again ({RETRY_AFTER_SECONDS}).",
            "schema": {"type": "integer", "minimum": 0}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {
            "description": "`Bearer realm=\"hashsvc\"`", "schema": {"type": "string"}}}
    return response


def _problem_schema() -> Schema:
    return {
        "type": "object",
        "description": "An RFC 9457 problem document; `type` names the gRPC status.",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri",
                     "pattern": "^" + re.escape(PROBLEM_TYPE_PREFIX) + "[A-Z_]+$"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string", "description": "What was wrong, for a person."},
            "instance": {"type": "string", "format": "uri-reference"},
        },
    }


def proto_comments(proto_root: Path = PROTO_ROOT) -> dict[str, str]:
    """Each element's comment in the .proto sources, by full name (`Message.field`,
    `Enum.VALUE`, `Service.Method`), from protoc's source info (leading and trailing comments,
    lines of a paragraph joined)."""
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(proto_root)) for p in proto_root.glob("hashsvc/v1/*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.binpb"
        if protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", "--include_source_info",
                        f"--descriptor_set_out={out}", *sources]) != 0:
            raise SystemExit(f"protoc failed on {proto_root}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    comments: dict[str, str] = {}
    for file in files:
        named = _names(file)
        text = _attached(file, dict(named), (proto_root / file.name).read_text().splitlines())
        comments.update((name, text[path]) for path, name in named if text.get(path))
        # A file of one service opens with its description (the comment over `syntax`).
        header = [_clean(loc.leading_comments) for loc in file.source_code_info.location
                  if list(loc.path) == [_SYNTAX]]
        if len(file.service) == 1 and header and header[0]:
            comments.setdefault(f"{file.package}.{file.service[0].name}", header[0])
    return comments


def _attached(file: descriptor_pb2.FileDescriptorProto, named: Mapping[tuple[int, ...], str],
              source: list[str]) -> dict[tuple[int, ...], str]:
    """Each named element's comment. protoc gives a trailing comment continued on the next
    lines, indented under its first (`int32 x = 1;  // starts here` / `//   and ends here`), to
    the next element as its leading comment; this file's protos write that often, so such a
    block, indented past the element it precedes, goes back to the element above it."""
    locations = {tuple(loc.path): loc for loc in file.source_code_info.location
                 if tuple(loc.path) in named}
    leading = {path: loc.leading_comments for path, loc in locations.items()}
    trailing = {path: loc.trailing_comments for path, loc in locations.items()}
    ending = {loc.span[2 if len(loc.span) == 4 else 0]: path for path, loc in locations.items()}
    for path, loc in locations.items():
        line, column = loc.span[0], loc.span[1]
        block = leading[path].splitlines(keepends=True)
        first = line - len(block)  # the block is the lines right above the element
        previous = ending.get(first - 1)
        if previous is None or not trailing[previous]:
            continue
        indented = 0  # the block's first lines, indented past the element: a continuation
        while indented < len(block) and source[first + indented].find("//") > column:
            indented += 1
        trailing[previous] += "".join(block[:indented])
        leading[path] = "".join(block[indented:])
    return {path: _clean(leading[path] + "\n" + trailing[path]) for path in locations}


def _names(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[tuple[int, ...], str]]:
    """(source-info path, full name) of every message, field, enum, value, service, method
    (the path numbers are FileDescriptorProto's and DescriptorProto's field numbers)."""
    named: list[tuple[tuple[int, ...], str]] = []

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        named.append((path, f"{scope}.{proto.name}"))
        named.extend(((*path, 2, i), f"{scope}.{proto.name}.{value.name}")
                     for i, value in enumerate(proto.value))

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{proto.name}"
        named.append((path, name))
        named.extend(((*path, 2, i), f"{name}.{f.name}") for i, f in enumerate(proto.field))
        for i, nested in enumerate(proto.nested_type):
            message((*path, 3, i), nested, name)
        for i, nested_enum in enumerate(proto.enum_type):
            enum((*path, 4, i), nested_enum, name)

    for i, proto in enumerate(file.message_type):
        message((4, i), proto, file.package)
    for i, proto_enum in enumerate(file.enum_type):
        enum((5, i), proto_enum, file.package)
    for i, service in enumerate(file.service):
        named.append(((6, i), f"{file.package}.{service.name}"))
        named.extend(((6, i, 2, j), f"{file.package}.{service.name}.{method.name}")
                     for j, method in enumerate(service.method))
    return named


def _clean(comment: str) -> str:
    """Comment lines to text: paragraphs (split at blank lines) with their lines joined."""
    paragraphs = re.split(r"\n\s*\n", "\n".join(line.strip() for line in comment.splitlines()))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


@cache
def _served() -> bytes:
    return DOCUMENT.read_bytes()


def openapi_route() -> StarletteRoute:
    """`GET /v1/openapi.json`: the checked-in document. No key: it describes, it does nothing."""
    async def endpoint(_request: Request) -> Response:
        return Response(_served(), media_type="application/json")

    return StarletteRoute(SERVED_AT, endpoint, methods=["GET"], name="openapi")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if the checked-in document is stale")
    args = parser.parse_args(argv)
    where = DOCUMENT.relative_to(PROTO_ROOT.parent)
    if args.check:
        if not is_fresh(DOCUMENT):
            print(f"{where} is stale: run `python -m hashsvc.http.openapi` and commit the "
                  "result", file=sys.stderr)
            return 1
        print(f"{where} is up to date ({len(ROUTES)} routes)")
        return 0
    DOCUMENT.write_text(render(build_document(ROUTES, proto_comments())))
    print(f"wrote {where} ({len(ROUTES)} routes)")
    return 0


def is_fresh(path: Path = DOCUMENT) -> bool:
    """Whether `path` holds exactly the document the routes and protos make now."""
    return path.is_file() and path.read_text() == render(build_document(ROUTES,
                                                                        proto_comments()))


if __name__ == "__main__":
    sys.exit(main())
