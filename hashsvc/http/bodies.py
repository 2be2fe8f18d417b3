"""Reading an HTTP request's body: its media type, its size limit, a slow client, a form.

Why by hand rather than Starlette's `request.form()`: that spools a file part over 1 MB to a
temporary file on disk, and an uploaded image must never be stored; here the body is read
into memory, capped by `max_body` before and while it arrives, and a multipart form is parsed
from those bytes (python-multipart's parser, no files).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hashsvc import metrics
from hashsvc.http.problems import problem

JSON_TYPES = ("application/json",)
IMAGE_TYPES_HINT = "image/* or application/octet-stream, or multipart/form-data"
_MAX_FORM_FIELDS = 32
_CODES = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED,
          408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED}


class Refused(Exception):
    """The HTTP layer refuses the request before any gRPC call: a problem document, counted in
    hashsvc_http_refused_total by `reason`."""

    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason = status, detail, reason

    def response(self, instance: str) -> Response:
        metrics.HTTP_REFUSED.labels(self.reason).inc()
        code = _CODES.get(self.status, grpc.StatusCode.INVALID_ARGUMENT)  # 400, 415
        return problem(code, self.detail, status=self.status, instance=instance)


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # --max-image-bytes plus room for a request's other fields
    idle_seconds: float  # --client-idle-timeout: the longest wait for the next piece of a body


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower case; "" when there is none."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def is_json(media: str) -> bool:
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def is_image(media: str) -> bool:
    return media.startswith("image/") or media in ("application/octet-stream", "")


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed the limit: from
    Content-Length before a byte is read, else while it streams (chunked). A client that sends
    nothing for `idle_seconds` gets 408."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(limits)
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream, None), limits.idle_seconds)
        except TimeoutError:
            raise Refused(408, f"the request body stopped arriving for {limits.idle_seconds:g} s "
                          "(--client-idle-timeout)", "timeout") from None
        except ClientDisconnect:  # an everyday event, not a server error to log with a trace
            raise Refused(499, "the client went away before its body arrived",
                          "disconnected") from None
        if chunk is None:
            return b"".join(chunks)
        size += len(chunk)
        if size > limits.max_bytes:
            raise _too_large(limits)
        chunks.append(chunk)


def _too_large(limits: BodyLimits) -> Refused:
    return Refused(413, f"request body is over {limits.max_bytes} bytes "
                   "(--max-image-bytes plus 1 MiB for the other fields)", "too_large")


def unsupported(media: str, wanted: str) -> Refused:
    shown = media or "none"
    hint = (" (curl -d/--data-binary sends that unless given -H 'Content-Type: ...')"
            if media == "application/x-www-form-urlencoded" else "")
    return Refused(415, f"Content-Type {shown} is not accepted here; send {wanted}{hint}",
                   "media_type")


def form_parts(body: bytes, content_type: str, file_field: str) -> tuple[bytes | None,
                                                                      list[tuple[str, str]]]:
    """A multipart/form-data body, parsed in memory: the bytes of the part named `file_field`
    (None if absent), and every other part as a text field (name, value)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart/form-data without a boundary", "bad_request")
    parts: list[tuple[dict[str, str], bytearray]] = []
    header: list[bytearray] = [bytearray(), bytearray()]

    def header_end() -> None:
        parts[-1][0][bytes(header[0]).decode("latin-1").strip().lower()] = \
            bytes(header[1]).decode("latin-1").strip()
        header[0].clear()
        header[1].clear()

    parser = MultipartParser(boundary, {
        "on_part_begin": lambda: parts.append(({}, bytearray())),
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    })
    try:
        parser.write(body)
        parser.finalize()
    except FormParserError as err:
        raise Refused(400, f"malformed multipart/form-data: {err}", "bad_request") from None
    if len(parts) > _MAX_FORM_FIELDS:
        raise Refused(400, f"more than {_MAX_FORM_FIELDS} form fields", "bad_request")
    file: bytes | None = None
    fields: list[tuple[str, str]] = []
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if name == file_field:
            if file is not None:
                raise Refused(400, f"more than one form field {file_field!r}", "bad_request")
            file = bytes(data)
        elif b"filename" in disposition:
            raise Refused(400, f"form field {name!r} is a file: the image goes in the field "
                          f"{file_field!r}", "bad_request")
        else:
            try:
                fields.append((name, data.decode("utf-8")))
            except UnicodeDecodeError:
                raise Refused(400, f"form field {name!r} is not UTF-8 text",
                              "bad_request") from None
    return file, fields
