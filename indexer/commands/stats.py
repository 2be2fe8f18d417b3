"""`indexer stats`: what the store holds, what running servers match, and the current snapshot.

Servers match the current snapshot plus every store change made since it (their delta, applied
within a reload interval), so what they serve is the store's active entries: not disabled, in
enabled banks. That is the figure to read; the snapshot's own counts lag until the next publish
compacts the changes into it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from indexer.commands.common import add_command, home, open_store


def register(subcommands: Any) -> None:
    parser = add_command(subcommands, "stats",
                         "Show entry counts per bank and algorithm: stored, served by running "
                         "servers (live changes included), and in the current snapshot.",
                         "indexer stats --json", _run)
    parser.add_argument("--json", action="store_true")


def _run(args: argparse.Namespace) -> int:
    # here: FAISS is not every verb's import cost
    from hashsvc.snapshot import current_version, list_versions, read_manifest

    data_home = home(args)
    with open_store(args) as store:
        stats = store.stats()
        staged = sorted(bank.name for bank in store.list_banks() if not bank.enabled)
        version = current_version(data_home.snapshots_dir)
        manifest = read_manifest(data_home.snapshots_dir / version) if version else None
        changed = (len(store.changes_since(int(manifest["store_revision"])).changed)
                   if manifest else None)
    served = sum(sum(counts.values()) for counts in stats.served_by_bank_algorithm.values())
    snapshot: dict[str, Any] | None = None
    if manifest is not None:
        snapshot = {"version": version, "created_at": manifest["created_at"],
                    "store_revision": manifest["store_revision"],
                    "up_to_date": manifest["store_revision"] == stats.revision,
                    "entries_changed_since": changed, "counts": manifest["counts"]}
    report = {
        "store": {"revision": stats.revision, "banks": stats.banks, "entries": stats.entries,
                  "disabled": stats.disabled, "staged_banks": staged,
                  "by_bank": stats.by_bank_algorithm},
        "served": {"entries": served, "by_bank": stats.served_by_bank_algorithm},
        "snapshot": snapshot,
        "versions_on_disk": list_versions(data_home.snapshots_dir),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"store: {stats.entries:,} entries ({stats.disabled:,} disabled) in {stats.banks} "
          f"banks, revision {stats.revision}")
    for bank, counts in sorted(stats.by_bank_algorithm.items()):
        state = " (staged: disabled bank, not served)" if bank in staged else ""
        print(f"  {bank}: " + ", ".join(f"{n:,} {a}" for a, n in sorted(counts.items())) + state)
    print(f"served: {served:,} entries, what running servers match now (live changes "
          "included)")
    if snapshot is None:
        print("snapshot: none published yet (run `indexer publish`; a starting server also "
              "publishes one)")
    elif snapshot["up_to_date"]:
        print(f"snapshot: {version}, {snapshot['counts']['entries']:,} entries (up to date)")
    else:
        print(f"snapshot: {version}, {snapshot['counts']['entries']:,} entries; {changed:,} "
              "entries changed since are served live from the store (`indexer publish` "
              "compacts them into a new snapshot)")
    return 0
