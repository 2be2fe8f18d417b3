"""What the parts of the chaos tool share: named checks, a hang-guarded wait, a server.

Each check is printed as it is made and kept for the JSON report; a tool exits 1 if any failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.server_process import ServerProcess


@dataclass
class Report:
    """Every check made, in order, and the figures the README quotes."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, section: str, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"section": section, "check": name, "ok": ok, "detail": detail})
        print(f"  {'ok  ' if ok else 'FAIL'} {section}: {name}{': ' + detail if detail else ''}",
              flush=True)
        return ok

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["ok"]]


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll until `condition`; False after `timeout` (a hang guard, never a measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def serve(home: Path, *flags: str) -> ServerProcess:
    """A real server on `home` with keys of its own (each server adds two to keys.toml)."""
    suffix = os.urandom(4).hex()
    server = ServerProcess(home, *flags, keys={f"admin-{suffix}": ["admin"],
                                               f"scanner-{suffix}": ["scan"]})
    server.keys["admin"], server.keys["scanner"] = (server.keys[f"admin-{suffix}"],
                                                    server.keys[f"scanner-{suffix}"])
    return server
