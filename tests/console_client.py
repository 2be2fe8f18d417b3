"""A browser stand-in for the console's security tests: urllib with cookies, redirects not
followed, so each test sees the exact status, headers and Set-Cookie the server sent (what an
attacker replaying a cookie or a token would send is exactly what these tests send)."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie

from tests.http_client import HttpAnswer

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleClient:
    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []  # every Set-Cookie header received, verbatim

    def get(self, path: str, headers: dict[str, str] | None = None) -> HttpAnswer:
        return self._send("GET", path, None, None, headers)

    def post(self, path: str, fields: dict[str, str], *,
             headers: dict[str, str] | None = None) -> HttpAnswer:
        body = urllib.parse.urlencode(fields).encode()
        return self._send("POST", path, body, "application/x-www-form-urlencoded", headers)

    def post_multipart(self, path: str, fields: dict[str, str],
                       files: dict[str, tuple[str, bytes]]) -> HttpAnswer:
        boundary = "hashsvc-test-boundary-7d1c"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n".encode() for name, value in fields.items()]
        parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                  f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'.encode()
                  + content + b"\r\n" for name, (filename, content) in files.items()]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self._send("POST", path, body, f"multipart/form-data; boundary={boundary}", None)

    def token(self, path: str = "/console/signin") -> str:
        """The CSRF token of the form on `path` (as the page was rendered for this client)."""
        answer = self.get(path)
        match = TOKEN.search(answer.body.decode())
        assert match, f"no CSRF token on {path} ({answer.status})"
        return match.group(1)

    def sign_in(self, key: str) -> HttpAnswer:
        return self.post("/console/signin", {"csrf_token": self.token(), "key": key})

    def _send(self, method: str, path: str, body: bytes | None, content_type: str | None,
              headers: dict[str, str] | None) -> HttpAnswer:
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if content_type is not None:
            sent["Content-Type"] = content_type
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=sent)
        try:
            with _OPENER.open(request, timeout=60) as response:
                status, raw_headers, content = response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            status, raw_headers, content = err.code, err.headers, err.read()
        answer = HttpAnswer(status, {k.lower(): v for k, v in raw_headers.items()}, content)
        for header in raw_headers.get_all("Set-Cookie") or ():
            self.set_cookies.append(header)
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if morsel["max-age"] in ("0",) or morsel.value in ("", '""'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return answer


def set_cookie_attributes(header: str) -> dict[str, str]:
    """`Set-Cookie` attributes by lower-case name (flags map to "")."""
    attributes: dict[str, str] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attributes[name.lower()] = value
    return attributes


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())
