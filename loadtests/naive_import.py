"""The import a reasonable engineer writes first: the baseline that bench_import.py measures.

    python loadtests/naive_import.py LIST.csv STORE.sqlite

The standard `csv` and `sqlite3` modules, no tuning: one `executemany` of one INSERT per line
in one transaction, a UNIQUE constraint to skip duplicates, each hash checked with
`bytes.fromhex`. Prints the number of rows added.
"""

from __future__ import annotations

import csv
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path


def rows(path: Path) -> Iterator[tuple[str, bytes, str]]:
    with path.open(newline="") as handle:
        for line, record in enumerate(csv.DictReader(handle), start=2):
            value = bytes.fromhex(record["hash"])
            if len(value) != 32:
                raise ValueError(f"{path}:{line}: not a PDQ hash")
            yield record["algorithm"], value, record["external_id"]


def main(argv: list[str]) -> int:
    source, target = Path(argv[0]), Path(argv[1])
    with sqlite3.connect(target) as db:  # commits on success, rolls back on an error
        db.execute("CREATE TABLE IF NOT EXISTS hashes (id INTEGER PRIMARY KEY, algorithm TEXT,"
                   " hash BLOB, external_id TEXT, UNIQUE (algorithm, hash))")
        added = db.executemany("INSERT OR IGNORE INTO hashes (algorithm, hash, external_id)"
                               " VALUES (?, ?, ?)", rows(source)).rowcount
    print(added)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
