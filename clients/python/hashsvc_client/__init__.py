"""hashsvc_client: the Python client for hashsvc (sync `Client`, asyncio `AsyncClient`).

    from hashsvc_client import Client
    with Client("localhost:50051", api_key="hsk_...") as client:
        result = client.scan_image(image_bytes)

The names below are imported on first use (PEP 562), not with the package. Why: every CLI
(`indexer`, `hashscan`) imports `hashsvc_client._console`, and importing a submodule runs this
file first; eager imports here cost each `indexer` call grpc's import (~0.15 s) for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names for type checkers (`X as X`: re-exported)
    from hashsvc_client._channel import Tls as Tls
    from hashsvc_client._channel import make_hash as make_hash
    from hashsvc_client.aio import AsyncClient as AsyncClient
    from hashsvc_client.client import Client as Client
    from hashsvc_client.errors import AlreadyExists as AlreadyExists
    from hashsvc_client.errors import DeadlineExceeded as DeadlineExceeded
    from hashsvc_client.errors import FailedPrecondition as FailedPrecondition
    from hashsvc_client.errors import HashsvcClientError as HashsvcClientError
    from hashsvc_client.errors import InvalidArgument as InvalidArgument
    from hashsvc_client.errors import NotFound as NotFound
    from hashsvc_client.errors import PermissionDenied as PermissionDenied
    from hashsvc_client.errors import ResourceExhausted as ResourceExhausted
    from hashsvc_client.errors import ServerError as ServerError
    from hashsvc_client.errors import Unauthenticated as Unauthenticated
    from hashsvc_client.errors import Unavailable as Unavailable

__version__ = "0.1.0"

_ERRORS = ("AlreadyExists", "DeadlineExceeded", "FailedPrecondition", "HashsvcClientError",
           "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
           "ServerError", "Unauthenticated", "Unavailable")
# public name -> the submodule that defines it
_HOME: dict[str, str] = {
    "Tls": "_channel", "make_hash": "_channel", "AsyncClient": "aio", "Client": "client",
    **{name: "errors" for name in _ERRORS},
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'hashsvc_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hashsvc_client.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
