"""Console sign-in, sessions and CSRF against the real server, sent as an attacker would: plain
HTTP with chosen cookies and tokens (tests/console_client.py). The browser tests drive the same
flows through Chromium (test_console_pages.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request

from hashsvc.config import ServerConfig
from hashsvc.http.console.context import Console
from tests.console_client import ConsoleClient, set_cookie_attributes
from tests.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("console-sessions")) as process:
        yield process


def _client(server: ServerProcess) -> ConsoleClient:
    assert server.http_port is not None
    return ConsoleClient(f"http://127.0.0.1:{server.http_port}")


def _signed_in(server: ServerProcess) -> ConsoleClient:
    client = _client(server)
    answer = client.sign_in(server.keys["admin"])
    assert answer.status == 303 and answer.headers["location"] == "/console/banks"
    return client


def test_an_admin_key_signs_in_with_a_strict_httponly_cookie_holding_no_key(
        server: ServerProcess) -> None:
    client = _signed_in(server)
    session_header = next(h for h in client.set_cookies if h.startswith("hashsvc_console="))
    attributes = set_cookie_attributes(session_header)
    assert "httponly" in attributes and attributes["samesite"].lower() == "strict"
    assert attributes["path"] == "/console" and int(attributes["max-age"]) == 3600
    assert "secure" not in attributes  # plain HTTP here; over TLS the cookie is Secure
    assert server.keys["admin"] not in session_header  # sealed, not readable
    page = client.get("/console/banks")
    assert page.status == 200 and b"Sign out" in page.body
    # The secret that seals cookies was made by `serve`, readable by its user only.
    assert (server.home / "console-secret").stat().st_mode & 0o777 == 0o600
    # Neither the key nor the cookie ever reaches the log.
    assert server.keys["admin"] not in server.log
    assert client.cookies["hashsvc_console"] not in server.log


@pytest.mark.parametrize(("key_name", "status", "message"), [
    ("wrong", 401, b"This key is not known to the server."),
    ("scanner", 403, b"needs a key with the admin role"),
])
def test_a_wrong_key_or_a_scan_only_key_is_refused(
        server: ServerProcess, key_name: str, status: int, message: bytes) -> None:
    client = _client(server)
    key = server.keys.get(key_name, "hs_not_a_real_key")
    answer = client.sign_in(key)
    assert answer.status == status and message in answer.body
    assert "hashsvc_console" not in client.cookies
    assert client.get("/console/banks").status == 303


def test_every_console_page_has_the_security_headers(server: ServerProcess) -> None:
    client = _signed_in(server)
    for path in ("/console/signin", "/console/banks", "/console/no-such-page"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
    assert client.get("/console/static/console.css").headers["cache-control"] == "no-cache"


def test_a_page_without_a_session_sends_a_get_to_sign_in_and_refuses_a_post(
        server: ServerProcess) -> None:
    client = _client(server)
    answer = client.get("/console/entries")
    assert answer.status == 303 and answer.headers["location"] == "/console/signin"
    refused = client.post("/console/signout", {"csrf_token": "x"})
    assert refused.status == 401 and b"Your session has ended" in refused.body


def test_a_post_without_its_csrf_token_or_with_another_sessions_is_refused(
        server: ServerProcess) -> None:
    client, other = _signed_in(server), _signed_in(server)
    for fields in ({}, {"csrf_token": "0" * 64}, {"csrf_token": other.token("/console/banks")}):
        answer = client.post("/console/signout", fields)
        assert answer.status == 403 and b"security token" in answer.body
    assert client.get("/console/banks").status == 200  # still signed in: nothing was done


def test_a_cross_origin_post_is_refused_even_with_a_good_token(server: ServerProcess) -> None:
    client = _signed_in(server)
    token = client.token("/console/banks")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = client.post("/console/signout", {"csrf_token": token}, headers=headers)
        assert answer.status == 403 and b"another" in answer.body
    assert client.get("/console/banks").status == 200


def test_sign_out_ends_the_session_for_every_copy_of_the_cookie(server: ServerProcess) -> None:
    client = _signed_in(server)
    stolen = dict(client.cookies)
    old_token = client.token("/console/banks")
    answer = client.post("/console/signout", {"csrf_token": old_token})
    assert answer.status == 303 and answer.headers["location"] == "/console/signin"
    assert "hashsvc_console" not in client.cookies
    replay = ConsoleClient(client.base)
    replay.cookies = stolen
    assert replay.get("/console/banks").status == 303
    assert replay.post("/console/signout", {"csrf_token": old_token}).status == 401
    # The old session's token is no good with a new session either.
    client.sign_in(server.keys["admin"])
    answer = client.post("/console/signout", {"csrf_token": old_token})
    assert answer.status == 403
    assert client.get("/console/banks").status == 200


def test_the_sign_in_form_is_csrf_protected_too(server: ServerProcess) -> None:
    client = _client(server)
    answer = client.post("/console/signin", {"key": server.keys["admin"]})
    assert answer.status == 403 and "hashsvc_console" not in client.cookies


def test_an_expired_session_is_refused(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("console-ttl")
    with ServerProcess(home, "--console-session-ttl", "1") as short:
        client = _client(short)
        assert client.sign_in(short.keys["admin"]).status == 303
        time.sleep(1.5)  # past the TTL whatever the load: expiry is by the clock, not a race
        assert client.get("/console/banks").status == 303
        assert client.post("/console/signout", {"csrf_token": "x"}).status == 401


@pytest.mark.parametrize(("scheme", "secure"), [("https", True), ("http", False)])
def test_cookies_are_secure_whenever_the_console_is_reached_over_https(
        tmp_path: Path, scheme: str, secure: bool) -> None:
    """The console app's own rendering, for a request as uvicorn describes one that came over
    TLS (or through a trusted proxy that says so) and one that did not."""
    console = Console(ServerConfig(home=tmp_path), lambda: None)  # type: ignore[arg-type,return-value]
    request = Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/console/signin",
                       "root_path": "", "query_string": b"", "headers": [],
                       "server": ("console.example", 443 if secure else 80)})
    response = console.render(request, "auth/signin.html")
    [cookie] = [value.decode() for name, value in response.raw_headers if name == b"set-cookie"]
    assert cookie.startswith("hashsvc_console_pre=")
    assert ("secure" in set_cookie_attributes(cookie)) is secure
    assert (tmp_path / "console-secret").stat().st_mode & 0o777 == 0o600
