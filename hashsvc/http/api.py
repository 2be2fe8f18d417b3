"""Starlette endpoints for `routes.ROUTES`: HTTP request → gRPC request message → gateway call
→ canonical JSON, or a problem document."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from hashsvc.http.gateway import Gateway, GatewayError
from hashsvc.http.problems import bad_request, problem
from hashsvc.http.routes import ROUTES, Route

Endpoint = Callable[[Request], Awaitable[Response]]


def api_routes(gateway: Callable[[], Gateway], max_body: int) -> list[StarletteRoute]:
    """One Starlette route per `ROUTES` entry. `gateway` is called per request (the gateway
    is made inside the serving event loop, after the app)."""
    return [StarletteRoute(route.path, _endpoint(route, gateway, max_body),
                           methods=[route.http_method], name=route.operation_id)
            for route in ROUTES]


def bearer_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer KEY`; None if absent (the service then answers
    UNAUTHENTICATED, as over gRPC)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _endpoint(route: Route, gateway: Callable[[], Gateway], max_body: int) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            message = await _request_message(route, request, max_body)
        except _Refused as refused:
            return refused.response
        try:
            answer = await gateway().call(route.service, route.rpc, message, route.response,
                                          bearer_key(request))
        except GatewayError as err:
            return problem(err.code, err.details, instance=request.url.path)
        return JSONResponse(json_format.MessageToDict(answer, preserving_proto_field_name=False))

    return endpoint


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _request_message(route: Route, request: Request, max_body: int) -> Message:
    message = route.request()
    if route.body == "json":
        raw = await _read_body(request, max_body)
        try:
            document: Any = json.loads(raw or b"{}")
            json_format.ParseDict(document, message)
        except (ValueError, json_format.ParseError) as err:
            raise _Refused(bad_request(f"request body: {err}")) from None
    elif route.body == "image":
        message.image = await _read_body(request, max_body)  # type: ignore[attr-defined]
    _set_fields(message, {**request.query_params, **request.path_params})
    return message


def _set_fields(message: Message, values: dict[str, Any]) -> None:
    if not values:
        return
    try:
        json_format.ParseDict(values, message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise _Refused(bad_request(f"parameters: {err}")) from None


async def _read_body(request: Request, max_body: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `max_body`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise _Refused(_too_large(max_body))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise _Refused(_too_large(max_body))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_body: int) -> Response:
    return problem(grpc.StatusCode.RESOURCE_EXHAUSTED,
                   f"request body is over {max_body} bytes (--max-image-bytes)", status=413)
