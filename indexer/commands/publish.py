"""`indexer publish`: compact the store into a new snapshot and make it current."""

from __future__ import annotations

import argparse
from typing import Any

from hashsvc.snapshot import publish
from indexer.commands.common import add_command, emit, home, open_store, say


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "publish",
        "Compact the store into a new snapshot of every enabled bank and switch `current` to "
        "it atomically; servers pick it up without a restart. Entry changes and banks enabled "
        "or disabled are already live on running servers (within about a second, from an "
        "in-memory delta): publishing keeps that delta small, so run it after large imports "
        "or on a schedule. Bank names, kinds, tags, thresholds and strategies change here. "
        "Does nothing if the store has not changed since the current snapshot.",
        "indexer publish --keep 5", _run,
    )
    parser.add_argument("--force", action="store_true", help="build even if nothing changed")
    parser.add_argument("--keep", type=int, default=3,
                        help="snapshot versions to keep on disk (default 3, minimum 2)")


def _run(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        result = publish(store, home(args).snapshots_dir, force=args.force, keep=args.keep)
    counts = result.manifest["counts"]
    if result.published:
        say(f"published snapshot {result.version}: {counts['entries']:,} entries "
            f"in {result.seconds:.2f}s")
    else:
        say(f"store unchanged: snapshot {result.version} is still current (use --force)")
    emit({"version": result.version, "published": result.published, "counts": counts,
          "seconds": round(result.seconds, 3)})
    return 0
