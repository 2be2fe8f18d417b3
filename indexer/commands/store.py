"""`indexer store copy --to postgresql://...`: move a SQLite data home's store to PostgreSQL."""

from __future__ import annotations

import argparse
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.store import SqliteStore, is_postgres, open_store, redact
from indexer.commands.common import add_command, emit, home, say, store_url


def register(subcommands: Any) -> None:
    store = subcommands.add_parser(
        "store", help="manage the store itself (copy it to PostgreSQL)",
        description="Manage the store itself.")
    verbs = store.add_subparsers(title="store commands", metavar="VERB", required=True)
    parser = add_command(
        verbs, "copy",
        "Copy the home's SQLite store into an empty PostgreSQL database, verbatim: banks, "
        "entries with their ids, disabled and removed entries, and the revision, so that "
        "snapshots already published stay valid. One transaction: it lands whole or not at "
        "all. Then run servers and the indexer with --store URL (or HASHSVC_STORE).",
        "indexer --home /var/lib/hashsvc store copy --to postgresql://hashsvc@db/hashsvc", _run,
    )
    parser.add_argument("--to", required=True, metavar="URL",
                        help="the PostgreSQL store to fill (a password is better in PGPASSWORD "
                        "or ~/.pgpass than in the URL)")


def _run(args: argparse.Namespace) -> int:
    from hashsvc.store.postgres import PostgresStore
    from hashsvc.store.postgres_copy import copy_sqlite_to_postgres

    if store_url(args) is not None:
        raise HashsvcError("store copy reads the home's SQLite store: drop --store / "
                           "$HASHSVC_STORE and name the PostgreSQL store with --to")
    if not is_postgres(args.to):
        raise HashsvcError(f"--to must be a postgresql:// URL, got {redact(args.to)!r}")
    with SqliteStore(home(args).store_path) as source, open_store(args.to) as target:
        assert isinstance(target, PostgresStore)
        report = copy_sqlite_to_postgres(source, target)
        say(f"copied {report.banks:,} banks and {report.entries:,} entries "
            f"({report.removed:,} removal records, revision {report.revision}) from "
            f"{source.location} to {target.location}")
        emit({"banks": report.banks, "entries": report.entries, "removed": report.removed,
              "revision": report.revision, "to": target.location})
    return 0
