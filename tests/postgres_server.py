"""A real, throwaway PostgreSQL server for the tests: Debian's binaries, a temporary cluster,
127.0.0.1 on a free port, stopped at the end.

Why the `postgres` user: initdb and postgres refuse to run as root, and CI runs as root; when
the tests already run as another user, that user owns the cluster. Why not the cluster Debian's
package may have created and started: its settings, port and contents are the machine's, not the
tests'; this one starts empty, with durability off (fsync) because nothing in it must outlive
the session.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

ENV_SKIP = "HASHSVC_TESTS_WITHOUT_POSTGRES"  # set to 1 to skip PostgreSQL tests (never in CI)


def find_binaries() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda path: int(path.parent.parent.name)
                   if path.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A cluster in a temporary directory, and the server running on it."""

    def __init__(self, bin_dir: Path, root: Path, user: str, as_owner: Callable[[], None]) -> None:
        self.user = user
        self.port = _free_port()
        self._bin_dir, self._root, self._as_owner = bin_dir, root, as_owner
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def start(self) -> None:
        log = self._root / "server.log"
        with log.open("ab") as log_file:
            self._process = subprocess.Popen(
                [self._bin_dir / "postgres", "-D", self._root / "data", "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", self._root / "sockets", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=self._as_owner,
                cwd=self._root)
        for _ in range(600):  # a hang guard, not a timing assumption: each try is a real connect
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{log.read_text()}")
            try:
                psycopg.connect(self.url(), connect_timeout=5).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections:\n{log.read_text()}")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, as in a restart or failover."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop (fast: every client disconnected, transactions in flight rolled back) and start
        again on the same port and data, as a restart or a failover looks to a client."""
        self.stop()
        self.start()


@contextlib.contextmanager
def running_postgres(bin_dir: Path) -> Iterator[PostgresServer]:
    run_as = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    account = pwd.getpwnam(run_as)
    root = Path(tempfile.mkdtemp(prefix="hashsvc-pg-"))
    os.chown(root, account.pw_uid, account.pw_gid)

    def as_owner() -> None:  # the child drops root before exec: initdb insists on it
        if os.geteuid() == 0:
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

    try:
        subprocess.run([bin_dir / "initdb", "-D", root / "data", "-U", run_as, "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True, preexec_fn=as_owner, cwd=root)
        (root / "sockets").mkdir()
        os.chown(root / "sockets", account.pw_uid, account.pw_gid)
        server = PostgresServer(bin_dir, root, run_as, as_owner)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
