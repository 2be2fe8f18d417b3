"""`indexer import BANK FILE...`: load hash lists, one transaction per file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hashsvc.errors import HashsvcError, ImportFileError
from hashsvc.hashing.algorithms import ALGORITHMS
from indexer.commands.common import add_command, open_store, say, show_progress
from indexer.hashlists import FORMATS, detect_format, parse_column_map
from indexer.importing import import_file

_SHOWN = 50
EXIT_PARTIAL = 7  # the valid lines were imported, some invalid ones were skipped (indexer.cli)


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "import",
        "Import hash lists (CSV/TSV with a header, JSON lines, or one hash per line) into a "
        "bank. Each file is one transaction: a malformed line fails the file with its line "
        "number and stores nothing from it. Re-importing a list adds nothing.",
        "indexer import ncmec ncmec-2026-11.csv --algorithm md5", _run,
    )
    parser.add_argument("bank")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, help="default: from the file extension")
    parser.add_argument("--algorithm", choices=tuple(ALGORITHMS),
                        help="for lines without an algorithm column (required for .txt)")
    parser.add_argument("--columns", type=_column_map, metavar="FIELD=COLUMN,...",
                        help="read our fields from the list's own columns, e.g. "
                        "hash=MD5,external_id=ID (fields: hash, algorithm, external_id, "
                        "metadata; header names match without regard to case)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="import the valid lines and list the invalid ones; exits 7 if "
                        "any line was rejected")
    parser.add_argument("--rejects", type=Path, metavar="FILE",
                        help="write every rejected line (file:line: reason) here")


def _column_map(text: str) -> dict[str, str]:
    """`--columns`, or a usage error (exit 2) saying what is wrong with it."""
    try:
        return parse_column_map(text)
    except HashsvcError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _run(args: argparse.Namespace) -> int:
    failed = 0
    rejects: list[str] = []
    with open_store(args) as store:
        for path in args.files:
            fmt = detect_format(path, args.format)
            try:
                report = import_file(store, args.bank, path, fmt, algorithm=args.algorithm,
                                     columns=args.columns, skip_invalid=args.skip_invalid,
                                     progress=show_progress())
            except ImportFileError as err:
                say(f"indexer: error: {err.message}")
                rejects.extend(str(p) for p in err.problems)
                failed += 1
                continue
            say(f"{path}: added {report.added:,}, duplicates {report.duplicates:,}, "
                f"rejected {len(report.rejected):,}")
            for problem in report.rejected[:_SHOWN]:
                say(f"  rejected {problem}")
            if len(report.rejected) > _SHOWN:
                say(f"  ... and {len(report.rejected) - _SHOWN:,} more (see --rejects)")
            rejects.extend(str(p) for p in report.rejected)
    if args.rejects is not None:
        args.rejects.write_text("".join(f"{line}\n" for line in rejects))
    if failed:
        return 3
    if rejects:  # --skip-invalid left lines out: a script must not take that for a clean import
        say(f"{len(rejects):,} invalid lines were rejected and not imported "
            f"(exit {EXIT_PARTIAL})")
        return EXIT_PARTIAL
    return 0
