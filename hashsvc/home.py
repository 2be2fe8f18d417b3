"""Where hashsvc keeps its data: one directory holding the store and the snapshots.

The indexer and the server find it the same way (`--home`, then `HASHSVC_HOME`, then a per-user
default), so the embedded default works with no configuration at all.

The home holds hash lists, API key hashes and the audit trail: nothing in it is for other local
users. It is created 0700, and the programs that write into it (`hashsvc serve`, `hashsvc keys`,
the indexer) call `keep_private` first, so that every file they create, SQLite's WAL and
shared-memory files and each snapshot file included, is 0600 whoever creates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hashsvc.errors import NotFoundError

ENV_VAR = "HASHSVC_HOME"
PRIVATE_UMASK = 0o077  # new files 0600, new directories 0700


def keep_private() -> None:
    """Make every file and directory this process creates from now on private to its user.

    One process-wide setting rather than a mode at each `open`: the store's files are created by
    SQLite and the snapshot's by NumPy, neither of which takes a mode."""
    os.umask(PRIVATE_UMASK)


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

    def create(self) -> DataHome:
        """Make the home (0700) if it does not exist yet; an existing one is left as it is."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    def require(self) -> DataHome:
        """The home, if it holds a store; else a one-line error, so that reading a mistyped
        home never creates an empty one and reports it as empty."""
        if not self.store_path.is_file():
            raise NotFoundError(
                f"no hashsvc data in {self.root} (no {self.store_path.name}): check --home or "
                f"${ENV_VAR}; `indexer bank create NAME` starts a new data home")
        return self

    @property
    def store_path(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "snapshots"

    @property
    def evaluation_dir(self) -> Path:
        """Where `indexer evaluate --to-home` writes the report the server shows."""
        return self.root / "evaluation"
