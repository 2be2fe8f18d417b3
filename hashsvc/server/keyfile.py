"""Loading the keys file for the server: every failure a HashsvcError, never key material.

Kept apart from interceptors.py so that `serve` can check the file before anything imports
prometheus_client (see app.py).
"""

from __future__ import annotations

from pathlib import Path

from hashsvc.errors import HashsvcError
from hashsvc.keys import KeyRing


def load_keys(path: Path) -> KeyRing:
    """The keys in `path`, or a HashsvcError naming the file and what is wrong with it.

    `read_keys` reports bad TOML (with its line) and bad entries; anything else a hand-edited
    file can hold (`keys = 5`, an entry that is not a table, bytes that are not UTF-8) is
    reported by its kind only, so that no fragment of the file reaches a log."""
    try:
        return KeyRing.load(path)
    except HashsvcError:
        raise
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise HashsvcError(f"{path}: not a valid keys file ({type(err).__name__}); expected "
                           "[[keys]] tables with name, roles and sha256") from None


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced (mtime alone can repeat within a tick)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
