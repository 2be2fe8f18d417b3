"""Starlette endpoints for `routes.ROUTES`: HTTP request → gRPC request message(s) → gateway
call → canonical JSON, or a problem document.

One Starlette route per path, dispatching on the method, so that a wrong method gets 405 with
an `Allow` header naming every method the path has (Starlette's own 405 names only the first
route's)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from hashsvc.http.bodies import (
    IMAGE_TYPES_HINT,
    BodyLimits,
    Refused,
    form_parts,
    is_image,
    is_json,
    media_type,
    read_body,
    unsupported,
)
from hashsvc.http.gateway import Gateway, GatewayError
from hashsvc.http.messages import field_named, mask_from_fields, params_to_json
from hashsvc.http.problems import problem
from hashsvc.http.routes import IMAGE_FIELD, ROUTES, Route

Endpoint = Callable[[Request], Awaitable[Response]]


def api_routes(gateway: Callable[[], Gateway], limits: BodyLimits) -> list[StarletteRoute]:
    """One Starlette route per distinct path of `ROUTES`. `gateway` is called per request (the
    gateway is made inside the serving event loop, after the app)."""
    by_path: dict[str, dict[str, Route]] = {}
    for route in ROUTES:
        methods = by_path.setdefault(route.path, {})
        if route.http_method in methods:
            raise ValueError(f"two routes for {route.http_method} {route.path}")
        methods[route.http_method] = route
    return [StarletteRoute(path, _endpoint(methods, gateway, limits), methods=list(methods),
                           name=" ".join(route.operation_id for route in methods.values()))
            for path, methods in by_path.items()]


def bearer_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer KEY`; None if absent or not a bearer token (the
    service then answers UNAUTHENTICATED, as over gRPC)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _endpoint(methods: dict[str, Route], gateway: Callable[[], Gateway],
              limits: BodyLimits) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        route = methods["GET" if request.method == "HEAD" else request.method]
        try:
            messages = await request_messages(route, request, limits)
        except Refused as refused:
            return refused.response(request.url.path)
        key = bearer_key(request)
        peer = _peer(request)
        try:
            if route.streaming:
                answer = await gateway().stream(route.service, route.rpc, messages,
                                                route.response, key, peer)
            else:
                answer = await gateway().call(route.service, route.rpc, messages[0],
                                              route.response, key, peer)
        except GatewayError as err:
            return problem(err.code, err.details, instance=request.url.path)
        return JSONResponse(json_format.MessageToDict(
            answer, always_print_fields_with_no_presence=True))

    return endpoint


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client is not None else "-"


async def request_messages(route: Route, request: Request, limits: BodyLimits) -> list[Message]:
    """The request as the gRPC call's message(s): one, or a stream's items in order."""
    descriptor = cast(Descriptor, route.request.DESCRIPTOR)
    image: bytes | None = None
    if route.body == "json":
        if request.query_params:
            name = next(iter(request.query_params))
            raise Refused(400, f"unknown query parameter {name!r}: this route takes a JSON body",
                          "bad_request")
        media = media_type(request)
        if media and not is_json(media):
            raise unsupported(media, "application/json")
        documents = _json_documents(route, await read_body(request, limits))
    else:
        params = list(request.query_params.multi_items())
        if route.body == "image":
            image, fields = await _image(request, limits)
            params += fields
        document = params_to_json(descriptor, params)
        if image is not None and IMAGE_FIELD in document:
            raise Refused(400, f"{IMAGE_FIELD!r} is the body, not a parameter", "bad_request")
        documents = [document]
    _set_path_params(route, request, descriptor, documents[0])
    messages = [_parse(route, document, n, len(documents)) for n, document in
                enumerate(documents)]
    if image is not None:
        messages[0].image = image  # type: ignore[attr-defined]
    return messages


async def _image(request: Request, limits: BodyLimits) -> tuple[bytes, list[tuple[str, str]]]:
    """An image route's image, and the form's other fields (none for a raw body)."""
    media = media_type(request)
    if media != "multipart/form-data" and not is_image(media):
        raise unsupported(media, IMAGE_TYPES_HINT)  # before a byte of the body is read
    body = await read_body(request, limits)
    if media != "multipart/form-data":
        return body, []
    image, fields = form_parts(body, request.headers["content-type"], IMAGE_FIELD)
    if image is None:
        raise Refused(400, f"the form has no field {IMAGE_FIELD!r} with the image",
                      "bad_request")
    return image, fields


def _set_path_params(route: Route, request: Request, descriptor: Descriptor,
                     document: dict[str, Any]) -> None:
    """Each path parameter into the field it names (on a stream's first item); a malformed
    one, or one the request gives again, is refused naming it."""
    for param, value in request.path_params.items():
        name = route.field_of(param)
        try:
            json_format.ParseDict({name: value}, route.request())
        except json_format.ParseError as err:
            raise Refused(400, f"path parameter {param!r}: {_readable(str(err))}",
                          "bad_request") from None
        if name in document or descriptor.fields_by_name[name].json_name in document:
            raise Refused(400, f"{name!r} is given by the path; leave it out of the request",
                          "bad_request")
        document[name] = value


def _json_documents(route: Route, raw: bytes) -> list[dict[str, Any]]:
    try:
        document: Any = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as err:
        raise Refused(400, f"the body is not JSON: {err}", "bad_request") from None
    except RecursionError:
        raise Refused(400, "the body's JSON is nested too deeply", "bad_request") from None
    items = document if route.streaming and isinstance(document, list) else [document]
    if not items:
        raise Refused(400, "the body is an empty array: give at least one item", "bad_request")
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            where = f"item {position}" if route.streaming else "the body"
            raise Refused(400, f"{where} is not a JSON object"
                          f"{' (or an array of them)' if route.streaming else ''}",
                          "bad_request")
    if route.mask_from and "updateMask" not in items[0] and "update_mask" not in items[0]:
        given = items[0].get(route.mask_from)
        if isinstance(given, dict):
            field = field_named(cast(Descriptor, route.request.DESCRIPTOR), route.mask_from)
            assert field is not None and field.message_type is not None, route
            items[0]["updateMask"] = mask_from_fields(field.message_type, given)
    return items


def _parse(route: Route, document: dict[str, Any], position: int, count: int) -> Message:
    message = route.request()
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as err:
        where = f"item {position}: " if count > 1 else ""
        raise Refused(400, f"{where}{_readable(str(err))}", "bad_request") from None
    except RecursionError:
        raise Refused(400, "the body's JSON is nested too deeply", "bad_request") from None
    return message


def _readable(error: str) -> str:
    """json_format's message, without the proto package prefix clients never see."""
    return error.replace("hashsvc.v1.", "")
