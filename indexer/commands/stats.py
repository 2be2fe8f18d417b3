"""`indexer stats`: what the store holds and what the current snapshot serves."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hashsvc.snapshot import current_version, list_versions, read_manifest
from indexer.commands.common import add_command, home, open_store


def register(subcommands: Any) -> None:
    parser = add_command(subcommands, "stats",
                         "Show entry counts per bank and algorithm, and the current snapshot.",
                         "indexer stats --json", _run)
    parser.add_argument("--json", action="store_true")


def _run(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stats = store.stats()
    snapshots_dir = home(args).snapshots_dir
    version = current_version(snapshots_dir)
    snapshot: dict[str, Any] | None = None
    if version is not None:
        manifest = read_manifest(snapshots_dir / version)
        snapshot = {"version": version, "created_at": manifest["created_at"],
                    "store_revision": manifest["store_revision"],
                    "up_to_date": manifest["store_revision"] == stats.revision,
                    "counts": manifest["counts"]}
    report = {
        "store": {"revision": stats.revision, "banks": stats.banks, "entries": stats.entries,
                  "disabled": stats.disabled, "by_bank": stats.by_bank_algorithm},
        "snapshot": snapshot,
        "versions_on_disk": list_versions(snapshots_dir),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"store: {stats.entries:,} entries ({stats.disabled:,} disabled) in {stats.banks} "
          f"banks, revision {stats.revision}")
    for bank, counts in sorted(stats.by_bank_algorithm.items()):
        print(f"  {bank}: " + ", ".join(f"{n:,} {a}" for a, n in sorted(counts.items())))
    if snapshot is None:
        print("snapshot: none published yet (run `indexer publish`)")
    else:
        state = "up to date" if snapshot["up_to_date"] else "store has unpublished changes"
        print(f"snapshot: {version}, {snapshot['counts']['entries']:,} entries ({state})")
    return 0
