"""What the verbs share: opening the data home, building sub-parsers, writing output."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome, keep_private
from hashsvc.store import Bank, Store, is_postgres, redact
from hashsvc.store import open_store as open_store_at

Runner = Callable[[argparse.Namespace], int]


def add_command(
    subcommands: Any, name: str, summary: str, example: str, run: Runner
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with a worked example."""
    parser: argparse.ArgumentParser = subcommands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


STORE_ENV = "HASHSVC_STORE"


def store_url(args: argparse.Namespace) -> str | None:
    """The PostgreSQL store given by --store or $HASHSVC_STORE, if any (else: the home's
    SQLite file). May hold a password: never print it (`hashsvc.store.redact`)."""
    url = getattr(args, "store", None) or os.environ.get(STORE_ENV) or None
    if url is not None and not is_postgres(url):
        raise HashsvcError(f"--store (or ${STORE_ENV}) must be a postgresql:// URL, got "
                           f"{redact(url)!r}; the SQLite store is <home>/store.sqlite")
    return url


def home(args: argparse.Namespace, *, create: bool = False) -> DataHome:
    """The data home; it must exist unless `create` (only `bank create` starts a new one). With
    a PostgreSQL store the home only holds snapshots, and is made when first needed."""
    keep_private()
    found = DataHome.resolve(args.home)
    return found.create() if create or store_url(args) else found.require()


def open_store(args: argparse.Namespace, *, create: bool = False) -> Store:
    url = store_url(args)
    return open_store_at(url if url else home(args, create=create).store_path)


def when_served(bank: Bank) -> str:
    """What an entry change in `bank` means for running servers, for the command's summary.

    Servers apply store changes within a reload interval (0.1 s by default) through their
    in-memory delta; a publish is only the compaction of those changes into a new snapshot."""
    if not bank.enabled:
        return (f"bank {bank.name!r} is staged (disabled): none of it is served until "
                f"`indexer bank enable {bank.name}`")
    return ("live on running servers within about a second; `indexer publish` later compacts "
            "the changes into a new snapshot")


def emit(record: dict[str, Any]) -> None:
    """One JSON object per line on stdout, for pipes and `jq`."""
    sys.stdout.write(json.dumps(record, sort_keys=False, ensure_ascii=False) + "\n")


def say(message: str) -> None:
    """Human-readable progress and summaries go to stderr, keeping stdout for data."""
    print(message, file=sys.stderr)


def show_progress() -> bool:
    return sys.stderr.isatty()
