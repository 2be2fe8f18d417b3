"""Importing a hash list into a bank: one file, one transaction.

A file either lands whole or not at all (unless `skip_invalid`), which is what a trust-and-safety
team needs when a list of millions has one corrupt line: an error naming the line, and a store
exactly as it was.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from hashsvc.errors import ImportFileError, LineProblem
from hashsvc.store import BulkAdder, EntryRow, Store
from indexer.hashlists import ColumnMap, Format, read_hash_list
from indexer.parser_process import parse_in_child

_BATCH = 50_000
_PARSER_MIN_BYTES = 16 << 20  # ~200k CSV lines: below, starting a parser process costs more


class _Inserter:
    """Inserts batches on a second thread while the caller parses the next one.

    sqlite3 releases the GIL while SQLite works, so parsing and inserting overlap: an import
    costs about the larger of the two instead of their sum. Still one transaction (the caller's
    `bulk_add`), at most two batches in memory, and an insert error is re-raised in the caller.
    """

    def __init__(self, adder: BulkAdder) -> None:
        self._adder = adder
        self._queue: queue.Queue[list[EntryRow] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="import-inserter", daemon=True)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._adder.add(batch)
                except BaseException as err:  # handed to the caller in put() / __exit__
                    self._error = err

    def put(self, batch: list[EntryRow]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def __enter__(self) -> _Inserter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and kind is None:
            raise self._error


def _parsed(
    path: Path, fmt: Format, algorithm: str | None, columns: ColumnMap | None
) -> Iterator[EntryRow | LineProblem]:
    """The file's lines, parsed: in a second process for a large file, else here.

    Why a process: parsing (csv, hex, checks) and inserting (sqlite3 binding each row) both need
    the GIL, so on threads they take turns and an import costs their sum. A parser process runs
    beside the insert; its entries cross the pipe as plain tuples (pickled ~6x faster than the
    NewEntry named tuples they were). Measured on 1M lines: see the README's import row.
    """
    here = read_hash_list(path, fmt, algorithm, columns)  # checks file, format, header at once
    if path.stat().st_size < _PARSER_MIN_BYTES:
        return here
    return parse_in_child(path, fmt, algorithm, columns)


def _estimate_lines(path: Path, sample: int = 1 << 16) -> int:
    """About how many lines `path` holds, from its size and its first `sample` bytes: enough
    for the store to choose how to maintain its indexes (see `BulkAdder`)."""
    with path.open("rb") as handle:
        head = handle.read(sample)
    return path.stat().st_size * head.count(b"\n") // max(len(head), 1)


@dataclass
class ImportReport:
    path: Path
    added: int = 0
    duplicates: int = 0
    rejected: list[LineProblem] = field(default_factory=list)


def import_file(
    store: Store,
    bank: str,
    path: Path,
    fmt: Format,
    *,
    algorithm: str | None = None,
    columns: ColumnMap | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
) -> ImportReport:
    """Import `path` into `bank` in one transaction; raise `ImportFileError` on a bad line
    (after reading the whole file, so the error lists every bad line) unless `skip_invalid`.
    `columns` maps our fields to the list's own column names (`hashlists.parse_column_map`)."""
    report = ImportReport(path)
    items = _parsed(path, fmt, algorithm, columns)
    with (
        store.bulk_add(bank, expected=_estimate_lines(path)) as adder,
        _Inserter(adder) as inserter,
        tqdm(desc=path.name, unit=" lines", disable=not progress, leave=False) as bar,
    ):
        batch: list[EntryRow] = []
        for item in items:
            bar.update()
            if isinstance(item, LineProblem):
                report.rejected.append(item)
                continue
            if report.rejected and not skip_invalid:
                continue  # the file will be rolled back; keep reading only to list problems
            batch.append(item)
            if len(batch) >= _BATCH:
                inserter.put(batch)
                batch = []
        if report.rejected and not skip_invalid:
            raise ImportFileError(str(path), report.rejected)
        inserter.put(batch)
    report.added = adder.result.added
    report.duplicates = adder.result.duplicates
    return report
