"""Importing a hash list into a bank: one file, one transaction.

A file either lands whole or not at all (unless `skip_invalid`), which is what a trust-and-safety
team needs when a list of millions has one corrupt line: an error naming the line, and a store
exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from hashsvc.errors import ImportFileError, LineProblem
from hashsvc.store import NewEntry, Store
from indexer.hashlists import Format, read_hash_list

_BATCH = 50_000


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
    skip_invalid: bool = False,
    progress: bool = False,
) -> ImportReport:
    """Import `path` into `bank` in one transaction; raise `ImportFileError` on a bad line
    (after reading the whole file, so the error lists every bad line) unless `skip_invalid`."""
    report = ImportReport(path)
    items = read_hash_list(path, fmt, algorithm)
    with store.bulk_add(bank) as adder, tqdm(
        desc=path.name, unit=" lines", disable=not progress, leave=False
    ) as bar:
        batch: list[NewEntry] = []
        for item in items:
            bar.update()
            if isinstance(item, LineProblem):
                report.rejected.append(item)
                continue
            if report.rejected and not skip_invalid:
                continue  # the file will be rolled back; keep reading only to list problems
            batch.append(item.entry)
            if len(batch) >= _BATCH:
                adder.add(batch)
                batch.clear()
        if report.rejected and not skip_invalid:
            raise ImportFileError(str(path), report.rejected)
        adder.add(batch)
    report.added = adder.result.added
    report.duplicates = adder.result.duplicates
    return report
