"""Headers on every console response, and HTML (never JSON) for a console path that fails.

The policy allows only this server's own files: no inline script or style, no frames (the
console cannot be framed for clickjacking), forms posted only to the console itself, and no
Referer leaving the console (its URLs hold search terms). Pages are `no-store`: they show hashes
and entry data that should not linger in a shared browser's cache.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS: tuple[tuple[bytes, bytes], ...] = tuple((k.encode(), v.encode()) for k, v in (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
    ("cross-origin-opener-policy", "same-origin"),
))
_STATIC_CACHE = (b"cache-control", b"no-cache")  # revalidated, so a new CSS is seen at once
_PAGE_CACHE = (b"cache-control", b"no-store")
_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           413: "Upload too large"}


class SecurityHeaders:
    """ASGI middleware around the console's router (see module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/console/static/")
        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"cache-control" or static]
                headers.extend(HEADERS)
                if not static:
                    headers.append(_PAGE_CACHE)
                elif not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(_STATIC_CACHE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except HTTPException as err:
            if started:
                raise
            await _plain_page(err.status_code, with_headers)


async def _plain_page(status: int, send: Send) -> None:
    """A minimal HTML page for a 404/405 under /console (the JSON API answers problems)."""
    title = _TITLES.get(status, "Error")
    body = (f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{title} - hashsvc '
            f'console</title><link rel="stylesheet" href="/console/static/console.css">'
            f'<main><h1>{title}</h1><p><a href="/console/">Back to the console</a></p></main>'
            ).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
