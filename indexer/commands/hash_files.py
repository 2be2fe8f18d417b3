"""`indexer hash FILE...`: every algorithm's hash of each file, as JSON lines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hashsvc.hashing.algorithms import ALGORITHMS, QUALITY_FLOOR
from indexer.commands.add_images import parse_algorithms
from indexer.commands.common import add_command, emit, show_progress
from indexer.folders import find_images, hash_files


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "hash",
        "Print each file's hashes (all algorithms by default, with PDQ quality) as JSON lines. "
        "Folders are searched for images.",
        "indexer hash photo.jpg | jq -r .pdq", _run,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--workers", type=int, help="processes (default: number of cores)")


def _run(args: argparse.Namespace) -> int:
    algorithms = parse_algorithms(args.algorithms)
    failures = 0
    files = find_images(args.paths)
    for result in hash_files(files, algorithms, workers=args.workers, progress=show_progress()):
        record: dict[str, Any] = {"file": str(result.path)}
        if result.error is not None:
            failures += 1
            record.update(error=result.error, reason=result.reason)
        for value in result.hashes:
            record[value.algorithm] = value.hex
            if value.quality is not None:
                record[f"{value.algorithm}_quality"] = value.quality
                record[f"{value.algorithm}_low_quality"] = value.quality < QUALITY_FLOOR
        emit(record)
    return 3 if failures else 0
