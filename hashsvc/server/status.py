"""Errors to gRPC status codes: the one mapping, used by every servicer."""

from __future__ import annotations

from typing import NoReturn

import grpc

from hashsvc.errors import ErrorCode, HashsvcError

STATUS: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    # A missing snapshot is transient from a caller's view: retry (the client does, on UNAVAILABLE).
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


# A status message travels percent-encoded in a trailer, which clients refuse past 8 KiB by
# default (they then see RESOURCE_EXHAUSTED, not the error): messages quote user input through
# `limits.quote`, and this bound (at most 3 bytes sent per byte kept) holds whatever they say.
_MAX_MESSAGE_BYTES = 2048


def abort(context: grpc.ServicerContext, error: HashsvcError) -> NoReturn:
    message = error.message
    if len(message.encode("utf-8", "replace")) > _MAX_MESSAGE_BYTES:
        message = message.encode("utf-8", "replace")[:_MAX_MESSAGE_BYTES].decode(
            "utf-8", "ignore") + "..."
    context.abort(STATUS[error.code], message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def check_deadline(context: grpc.ServicerContext, stage: str) -> None:
    """Stop before an expensive stage if the caller has already given up."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {stage}")
