"""The client's exceptions. Every gRPC error is mapped to one of these at a single boundary
(`map_rpc_error`), so callers never need to import grpc to handle failures:

    HashsvcClientError              anything the service or the connection reported
    ├── Unavailable                 server unreachable or not ready (after retries)
    ├── DeadlineExceeded            the call's deadline passed
    ├── Unauthenticated             missing or unknown API key
    ├── PermissionDenied            the key lacks the role (scan / admin)
    ├── InvalidArgument             bad image, bad hash, bad field: `details` says what and why
    ├── NotFound                    no such bank / entry
    ├── AlreadyExists               e.g. a bank name in use
    ├── FailedPrecondition          e.g. no snapshot published
    ├── ResourceExhausted           server at capacity, or message too large: back off
    └── ServerError                 anything else (INTERNAL, DATA_LOSS, UNKNOWN, ...)
"""

from __future__ import annotations

import grpc


class HashsvcClientError(Exception):
    """Base class; `code` is the gRPC status code and `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Unavailable(HashsvcClientError): ...


class DeadlineExceeded(HashsvcClientError): ...


class Unauthenticated(HashsvcClientError): ...


class PermissionDenied(HashsvcClientError): ...


class InvalidArgument(HashsvcClientError): ...


class NotFound(HashsvcClientError): ...


class AlreadyExists(HashsvcClientError): ...


class FailedPrecondition(HashsvcClientError): ...


class ResourceExhausted(HashsvcClientError): ...


class ServerError(HashsvcClientError): ...


_BY_CODE: dict[grpc.StatusCode, type[HashsvcClientError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def map_rpc_error(error: grpc.RpcError) -> HashsvcClientError:
    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    return _BY_CODE.get(code, ServerError)(code, details)
