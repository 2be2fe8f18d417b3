"""A console session where the console is more than one process: every worker of a server, and
every admin server sharing a PostgreSQL store (and the console secret), honours a session, and a
sign-out on any of them ends it on all of them."""

from __future__ import annotations

from pathlib import Path

from tests.console_client import ConsoleClient
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess

REQUESTS = 20  # each on a new connection, which the kernel gives to either worker


def _client(server: ServerProcess) -> ConsoleClient:
    return ConsoleClient(f"http://127.0.0.1:{server.http_port}")


def test_every_worker_honours_a_session_until_it_is_signed_out(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--workers", "2") as server:
        client = _client(server)
        assert client.sign_in(server.keys["admin"]).status == 303
        stolen = dict(client.cookies)
        assert [client.get("/console/banks").status for _ in range(REQUESTS)] == \
            [200] * REQUESTS
        token = client.token("/console/banks")
        assert client.post("/console/signout", {"csrf_token": token}).status == 303
        replay = _client(server)
        replay.cookies = stolen
        assert [replay.get("/console/banks").status for _ in range(REQUESTS)] == \
            [303] * REQUESTS


def test_a_sign_out_on_one_admin_server_ends_the_session_on_another(
        postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.new_database()
    secret = tmp_path / "console-secret"
    flags = ("--role", "admin", "--store", url, "--console-secret-file", str(secret))
    with ServerProcess(tmp_path / "a", *flags) as one:
        keys = ("--keys-file", str(one.home / "keys.toml"))
        with ServerProcess(tmp_path / "b", *flags, *keys, keys={}) as two:
            on_one = _client(one)
            assert on_one.sign_in(one.keys["admin"]).status == 303
            on_two = _client(two)
            on_two.cookies = dict(on_one.cookies)
            assert on_two.get("/console/banks").status == 200  # the same session on both
            token = on_two.token("/console/banks")
            assert on_two.post("/console/signout", {"csrf_token": token}).status == 303
            assert on_one.get("/console/banks").status == 303  # ended there too
