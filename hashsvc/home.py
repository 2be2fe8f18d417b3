"""Where hashsvc keeps its data: one directory holding the store and the snapshots.

The indexer and the server find it the same way (`--home`, then `HASHSVC_HOME`, then a per-user
default), so the embedded default works with no configuration at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "HASHSVC_HOME"


def default_home() -> Path:
    if value := os.environ.get(ENV_VAR):
        return Path(value)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "hashsvc"


@dataclass(frozen=True)
class DataHome:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | Path | None = None) -> DataHome:
        return cls(Path(explicit) if explicit else default_home())

    @property
    def store_path(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"
