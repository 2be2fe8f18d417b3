"""A tiny HTTP client for tests of the HTTP/JSON API: the standard library, so that what is
tested is the server's HTTP, not a client library's conveniences."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(base: str, method: str, path: str, *, key: str | None = None, body: bytes | None = None,
         json_body: Any = None, content_type: str | None = None,
         headers: dict[str, str] | None = None) -> HttpAnswer:
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if json_body is not None:
        body = json.dumps(json_body).encode()
        content_type = content_type or "application/json"
    if content_type is not None:
        sent["Content-Type"] = content_type
    request = urllib.request.Request(base + path, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()},
                              response.read())
    except urllib.error.HTTPError as err:
        return HttpAnswer(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())
