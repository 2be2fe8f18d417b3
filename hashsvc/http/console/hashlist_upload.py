"""A hash list uploaded on the Banks page: read with `indexer import`'s own parser (same formats,
same column maps, same messages naming the line), then sent as one AddEntries stream.

Why parse here and not only on the server: AddEntries names a bad entry by its position in the
stream, while an analyst needs the file's line (a header line and comments shift it). Every line
is parsed before anything is sent, and AddEntries is one transaction, so a list with a bad line
stores nothing. The upload is held in memory only (context.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from anyio import to_thread
from hashsvc_client.v1 import admin_pb2, types_pb2
from starlette.datastructures import FormData, UploadFile

from hashsvc.errors import HashsvcError, LineProblem
from hashsvc.hashing.algorithms import ALGORITHMS as KNOWN_ALGORITHMS
from hashsvc.server.convert import ALGORITHM_TO_PROTO, struct
from hashsvc.store import NewEntry
from indexer.hashlists import FORMATS as KNOWN_FORMATS
from indexer.hashlists import Format, detect_format, parse_column_map, read_hash_list

FORMATS: tuple[str, ...] = KNOWN_FORMATS
ALGORITHMS: tuple[str, ...] = tuple(KNOWN_ALGORITHMS)
SHOWN_PROBLEMS = 20
_BATCH = 1000  # entries per AddEntries message, as the Python client sends them


class UploadError(Exception):
    """Why the upload was refused (no file: 400; a bad line or option: 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    filename: str
    entries: list[NewEntry]

    def requests(self, bank: str) -> Iterator[admin_pb2.AddEntriesRequest]:
        for start in range(0, max(len(self.entries), 1), _BATCH):
            yield admin_pb2.AddEntriesRequest(
                bank=bank if start == 0 else "",
                entries=[_new_entry(e) for e in self.entries[start:start + _BATCH]])


async def read(form: FormData) -> Upload:
    upload = form.get("list")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise UploadError(400, "Choose a hash list file to import.")
    filename = PurePath(upload.filename).name[:200] or "upload"
    data = await upload.read()
    options = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    return await to_thread.run_sync(lambda: parse(filename, data, options))


def parse(filename: str, data: bytes, options: dict[str, str]) -> Upload:
    """Every line of the list, or an `UploadError` listing the bad lines (up to
    `SHOWN_PROBLEMS`) by line number."""
    if not data.strip():
        raise UploadError(422, f"{filename} is empty: there is nothing to import.")
    try:
        named = Path(filename)  # names the list in messages; its bytes are `data`
        fmt: Format = detect_format(named, _choice(options, "format", FORMATS))
        algorithm = _choice(options, "algorithm", ALGORITHMS)
        columns = parse_column_map(options["columns"]) if options.get("columns", "").strip() \
            else None
        entries: list[NewEntry] = []
        problems: list[LineProblem] = []
        for item in read_hash_list(named, fmt, algorithm, columns, data=data):
            if isinstance(item, LineProblem):
                problems.append(item)
            else:
                entries.append(item)
    except HashsvcError as err:
        raise UploadError(422, _sentence(err.message)) from None
    if problems:
        shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        raise UploadError(422, f"Nothing was imported: {len(problems):,} line(s) of {filename} "
                               f"are not valid: {shown}" + (f"; and {more:,} more" if more > 0
                                                            else "") + ".")
    if not entries:
        raise UploadError(422, f"{filename} has no hashes in it: nothing to import.")
    return Upload(filename, entries)


def _choice(options: dict[str, str], field: str, allowed: tuple[str, ...]) -> Any:
    value = options.get(field, "").strip()
    if not value or value == "auto":
        return None
    if value not in allowed:
        raise UploadError(422, f"Unknown {field} {value[:20]!r}: one of {', '.join(allowed)}.")
    return value


# The parser speaks to `indexer import`'s user; here the same choices are fields of the form.
_FLAGS_AS_FIELDS = (("pass --algorithm", "choose the algorithm"),
                    ("; pass --format (csv, tsv, jsonl, txt)", ": choose the format"),
                    ("--columns", "column map"))


def _sentence(message: str) -> str:
    for flag, field in _FLAGS_AS_FIELDS:
        message = message.replace(flag, field)
    return message + ("" if message.endswith(".") else ".")


def _new_entry(entry: NewEntry) -> admin_pb2.NewEntry:
    message = admin_pb2.NewEntry(
        hash=types_pb2.Hash(algorithm=ALGORITHM_TO_PROTO[entry.algorithm], raw=entry.hash),
        external_id=entry.external_id or "")
    metadata = struct(entry.metadata)
    if metadata is not None:
        message.metadata.CopyFrom(metadata)
    return message
