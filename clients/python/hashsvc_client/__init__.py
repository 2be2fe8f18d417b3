"""hashsvc_client: the Python client for hashsvc (sync `Client`, asyncio `AsyncClient`).

    from hashsvc_client import Client
    with Client("localhost:50051", api_key="hsk_...") as client:
        result = client.scan_image(image_bytes)
"""

from hashsvc_client._channel import Tls, make_hash
from hashsvc_client.aio import AsyncClient
from hashsvc_client.client import Client
from hashsvc_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    HashsvcClientError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HashsvcClientError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "make_hash",
]
