"""The real `hashsvc serve` in a child process on a loopback port, for tests and load tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from hashsvc.keys import add_key


class ServerProcess:
    def __init__(self, home: Path, *flags: str, keys: dict[str, list[str]] | None = None) -> None:
        self.home = home
        self.keys: dict[str, str] = {}
        keys_file = home / "keys.toml"
        for name, roles in (keys if keys is not None else {"admin": ["admin"],
                                                            "scanner": ["scan"]}).items():
            self.keys[name] = add_key(keys_file, name, roles)
        self._lines: list[str] = []
        # The flood guard off unless a test turns it on (--flood-window N): many tests scan one
        # image hundreds of times, which is a flood to it (tests/test_flood_guard.py tests it).
        defaults = {"--workers": "1", "--metrics-listen": "127.0.0.1:0", "--flood-window": "0",
                    "--http-listen": "127.0.0.1:0"}
        extra = [item for flag, value in defaults.items() if flag not in flags
                 for item in (flag, value)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "hashsvc", "serve", "--home", str(home),
             "--listen", "127.0.0.1:0", "--reload-interval", "0.2", *extra, *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        self.port = self._wait_for_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = next((int(r["port"]) for r in self.records()
                                  if r.get("message") == "metrics"), None)
        # The HTTP/JSON API's port; None when it is off (--http-listen off, or --role scan).
        self.http_port: int | None = next((r.get("http_port") for r in self.records()
                                           if r.get("message") == "serving"), None)

    @property
    def pid(self) -> int:
        """The server's process (with --workers N, the supervisor; its workers are children)."""
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def scrape(self) -> str:
        """The text of /metrics, as Prometheus would scrape it."""
        import urllib.request

        assert self.metrics_port is not None, "metrics are off"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as response:
            text: str = response.read().decode()
        return text

    def _drain(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.append(line)

    def _wait_for_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("message") == "serving":
                    return int(record["port"])
            if self._process.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"server exited {self._process.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def records(self) -> list[dict[str, Any]]:
        records = []
        for line in list(self._lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append({"message": line})
        return records

    def stop(self, timeout: float = 30) -> int:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._drainer.join(timeout=5)
        if self._process.stderr is not None:
            self._process.stderr.close()
        return self._process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
