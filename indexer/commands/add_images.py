"""`indexer add-images BANK PATH...`: hash image files and folders into a bank."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import ALGORITHMS
from hashsvc.limits import LIMITS, check_text, quote
from hashsvc.store import NewEntry
from indexer.commands.common import add_command, open_store, say, show_progress, when_served
from indexer.folders import find_images, hash_files

DEFAULT_ALGORITHMS = ("pdq", "md5")


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "add-images",
        "Hash image files and folders (recursively, in parallel over all cores) into a bank. "
        "Unreadable files are reported and skipped; the rest are added in one transaction. "
        "Each entry's external id is the file's path relative to the folder given. A bank "
        "with --trim-borders or --crop-variants also stores those extra PDQ hashes per image, "
        "under the same external id.",
        "indexer add-images my-bank ./known-images --algorithms pdq,md5", _run,
    )
    parser.add_argument("bank")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--algorithms", default=",".join(DEFAULT_ALGORITHMS),
                        help=f"comma-separated, from {', '.join(ALGORITHMS)} "
                        f"(default {','.join(DEFAULT_ALGORITHMS)})")
    parser.add_argument("--workers", type=int, help="processes (default: number of cores)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false")


def parse_algorithms(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if unknown or not names:
        raise HashsvcError(
            f"unknown algorithm(s) {', '.join(unknown) or '(none given)'} "
            f"(known: {', '.join(ALGORITHMS)})"
        )
    return names


def _external_id(path: Path, roots: list[Path]) -> str:
    """The path relative to the folder given, checked like every external id; a file name that
    is not UTF-8 keeps its odd bytes as `\\xNN` escapes."""
    relative = next((path.relative_to(root) for root in roots
                     if root.is_dir() and path.is_relative_to(root)), Path(path.name))
    text = os.fsencode(relative).decode("utf-8", "backslashreplace")
    try:
        return check_text(text, "external id", LIMITS.external_id_chars)
    except HashsvcError as err:
        raise HashsvcError(f"{quote(str(relative))}: {err.message}") from None


def _run(args: argparse.Namespace) -> int:
    algorithms = parse_algorithms(args.algorithms)
    with open_store(args) as store:
        bank = store.get_bank(args.bank)  # fail before hashing thousands of files, not after
    files = find_images(args.paths, recursive=args.recursive)
    if not files:
        raise HashsvcError(f"no image files found in {', '.join(map(str, args.paths))}")
    entries: list[NewEntry] = []
    failures = 0
    for result in hash_files(files, algorithms, workers=args.workers, progress=show_progress(),
                             strategies=bank.strategies):
        if result.error is not None:
            failures += 1
            say(f"  skipped {result.error}")
            continue
        try:
            external_id = _external_id(result.path, args.paths)
        except HashsvcError as err:
            failures += 1
            say(f"  skipped {err.message}")
            continue
        entries.extend(NewEntry(h.algorithm, h.value, external_id) for h in result.hashes)
        entries.extend(NewEntry(h.algorithm, h.value, external_id, variant=name)
                       for name, h in result.variants)
    with open_store(args) as store:
        added = store.add_entries(args.bank, entries)
        bank = store.get_bank(args.bank)
    say(f"{len(files) - failures:,} images hashed, {failures:,} skipped; "
        f"added {added.added:,} entries, duplicates {added.duplicates:,}: {when_served(bank)}")
    return 3 if failures else 0
