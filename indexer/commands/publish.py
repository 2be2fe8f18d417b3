"""`indexer publish`: compact the store into a new snapshot and make it current."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from indexer.commands.common import add_command, emit, home, open_store, say


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "publish",
        "Compact the store into a new snapshot of every enabled bank and switch `current` to "
        "it atomically; servers pick it up without a restart. Entry changes and banks enabled "
        "or disabled are already live on running servers (within about a second, from an "
        "in-memory delta): publishing keeps that delta small, so run it after large imports "
        "or on a schedule. Bank names, kinds, tags, thresholds and strategies change here. "
        "Does nothing if the store has not changed since the current snapshot. A small change "
        "is published as a layer on the current base (replicas download only the layer); "
        "--force writes a full snapshot.",
        "indexer publish --keep 5  (or: --snapshots s3://bucket/prefix)", _run,
    )
    parser.add_argument("--force", action="store_true",
                        help="build a full snapshot (no layer), even if nothing changed")
    parser.add_argument("--keep", type=int, default=3,
                        help="snapshot versions to keep (default 3, minimum 2); older ones "
                        "are deleted, and in a bucket every object only they used")
    parser.add_argument("--snapshots", metavar="DIR_OR_URL",
                        default=os.environ.get("HASHSVC_SNAPSHOTS"),
                        help="snapshot repository: a directory or s3://bucket/prefix "
                        "(default $HASHSVC_SNAPSHOTS, else <home>/snapshots)")
    parser.add_argument("--snapshot-cache", metavar="DIR", type=Path,
                        default=os.environ.get("HASHSVC_SNAPSHOT_CACHE"),
                        help="local staging and cache for a bucket (default "
                        "$HASHSVC_SNAPSHOT_CACHE, else <home>/snapshot-cache)")
    parser.add_argument("--s3-endpoint-url", metavar="URL",
                        default=os.environ.get("HASHSVC_S3_ENDPOINT_URL"),
                        help="S3-compatible endpoint (default $HASHSVC_S3_ENDPOINT_URL, then "
                        "$AWS_ENDPOINT_URL, else AWS S3)")


def _run(args: argparse.Namespace) -> int:
    from hashsvc.snapshot import publish  # here: FAISS is not every verb's import cost
    from hashsvc.snapshot.repository import open_repository

    data_home = home(args)
    repository = open_repository(
        args.snapshots or data_home.snapshots_dir,
        cache_dir=Path(args.snapshot_cache or data_home.root / "snapshot-cache"),
        endpoint_url=args.s3_endpoint_url)
    with open_store(args) as store:
        result = publish(store, repository, force=args.force, keep=args.keep)
    counts = result.manifest["counts"]
    if result.published:
        uploaded = (f", {result.uploaded_objects} new objects ({result.uploaded_bytes:,} bytes) "
                    f"uploaded to {repository.location}" if result.uploaded_objects else "")
        layer = result.manifest.get("layer")
        layered = (f" (a layer of {layer['tombstones']:,} changed entries on the current base; "
                   f"--force compacts)" if layer else "")
        say(f"published snapshot {result.version}: {counts['entries']:,} entries{layered} "
            f"in {result.seconds:.2f}s{uploaded}")
    else:
        say(f"store unchanged: snapshot {result.version} is still current (use --force)")
    emit({"version": result.version, "published": result.published, "counts": counts,
          "layered": "layer" in result.manifest,
          "seconds": round(result.seconds, 3), "uploaded_objects": result.uploaded_objects,
          "uploaded_bytes": result.uploaded_bytes})
    return 0
