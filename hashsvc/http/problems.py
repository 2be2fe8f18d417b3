"""Errors as RFC 9457 problem documents whose `type` names the gRPC status.

Why the gRPC status: a client that handles both APIs branches on one vocabulary, and the HTTP
status follows from it in one table (`HTTP_STATUS`). No exception text or trace ever reaches a
client: `detail` is the message the service chose to give, as over gRPC.
"""

from __future__ import annotations

from typing import Any

import grpc
from starlette.responses import JSONResponse

PROBLEM_TYPE_PREFIX = "tag:hashsvc,2026:grpc-status/"
MEDIA_TYPE = "application/problem+json"

# INVALID_ARGUMENT is 422 (the request was well-formed JSON or bytes, its content was refused:
# a corrupt image, a malformed hash); a body that is not JSON at all is 400 (see `bad_request`).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNIMPLEMENTED: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
}
TITLES: dict[int, str] = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    499: "Client Closed Request", 500: "Internal Server Error", 503: "Service Unavailable",
    504: "Gateway Timeout",
}
RETRY_AFTER_SECONDS = 1  # for 429 and 503: admission frees a slot in about a call's time


def problem(code: grpc.StatusCode, detail: str, *, status: int | None = None,
            instance: str | None = None, **extra: Any) -> JSONResponse:
    """A problem document for gRPC status `code`; `status` overrides the mapped HTTP status
    (e.g. 413 for a body over the limit, which is RESOURCE_EXHAUSTED in gRPC terms)."""
    http_status = status if status is not None else HTTP_STATUS.get(code, 500)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code.name,
        "title": TITLES.get(http_status, code.name.replace("_", " ").title()),
        "status": http_status,
        "detail": detail,
        **extra,
    }
    if instance:
        body["instance"] = instance
    headers = {}
    if http_status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="hashsvc"'
    return JSONResponse(body, status_code=http_status, headers=headers, media_type=MEDIA_TYPE)


def bad_request(detail: str) -> JSONResponse:
    """The request itself is unreadable (not JSON, an unknown field, a wrong type): 400."""
    return problem(grpc.StatusCode.INVALID_ARGUMENT, detail, status=400)
