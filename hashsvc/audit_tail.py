"""Reading the audit trail back, newest first: what AdminService.ListRecentMatches and the last
sync of an exchange-bound bank are made from.

Why backwards in blocks: the trail only grows (one JSON line per matching scan, for as long
as logrotate lets it), and an analyst wants the last few matches. Reading from the end costs
what the answer needs, not what the file holds; a line is parsed only if it contains a
`needle` (e.g. `"event":"scan"`), so lines of other kinds cost a substring search.

The search is bounded (`max_bytes` of the tail): a trail whose last matches are far back is
not read whole on every call; `Tail.bounded` says the bound was reached. Only the current file
is read: records rotated away are in the rotated files, for investigators with the files.
A line being appended while it is read is whole or absent (each record is one O_APPEND
`write`); one that does not parse is skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK_BYTES = 1 << 16
MAX_TAIL_BYTES = 64 << 20  # of the trail read per call, at most


class Tail:
    """The records of one audit file whose line contains `needle`, newest first."""

    def __init__(self, path: Path, needle: bytes, max_bytes: int = MAX_TAIL_BYTES) -> None:
        self.path = path
        self.needle = needle
        self.max_bytes = max_bytes
        self.bounded = False  # stopped at max_bytes before the file's first line

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            handle = self.path.open("rb")  # closed by the `with` below
        except FileNotFoundError:  # nothing audited yet
            return
        with handle:
            position = handle.seek(0, os.SEEK_END)
            start = max(0, position - self.max_bytes)
            partial = b""  # the start of a line whose beginning is in an earlier block
            while position > start:
                size = min(BLOCK_BYTES, position - start)
                position -= size
                handle.seek(position)
                lines = (handle.read(size) + partial).split(b"\n")
                partial = lines.pop(0)  # the whole first line only once the block before is read
                yield from self._records(reversed(lines))
            if start == 0:
                yield from self._records([partial])
            else:
                self.bounded = True

    def _records(self, lines: Any) -> Iterator[dict[str, Any]]:
        for line in lines:
            if self.needle in line:
                try:
                    record = json.loads(line)
                except ValueError:  # a torn or foreign line: not a record to show
                    continue
                if isinstance(record, dict):
                    yield record


def unix_time(text: Any) -> float:
    """A record's ISO 8601 `time` as Unix seconds (0.0 if it has none readable)."""
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return 0.0
