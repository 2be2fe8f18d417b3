"""`indexer match IMAGE...`: scan files against the current snapshot, locally."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashsvc.errors import ImageError
from indexer.commands.common import add_command, emit, home
from indexer.folders import find_images

if TYPE_CHECKING:
    from hashsvc.matching.matcher import Match
    from hashsvc.scanner import ScanResult


def register(subcommands: Any) -> None:
    parser = add_command(
        subcommands, "match",
        "Scan image files against the current snapshot with the same scanner the server uses; "
        "one JSON line per file. Exit status 1 if anything matched.",
        "indexer match suspect.jpg ./uploads/", _run,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--bank", action="append", dest="banks", default=[],
                        help="only these banks (repeatable)")
    parser.add_argument("--no-dihedral", dest="dihedral", action="store_false",
                        help="do not query PDQ's rotated and flipped variants")


def _run(args: argparse.Namespace) -> int:
    from hashsvc.scanner import Scanner, ScanOptions  # here: FAISS is not every verb's cost
    from hashsvc.snapshot import load_current

    scanner = Scanner(load_current(home(args).snapshots_dir))
    options = ScanOptions(banks=tuple(args.banks), dihedral=args.dihedral)
    matched = failed = 0
    for path in find_images(args.paths):
        try:
            result = scanner.scan_image(path.read_bytes(), options, name=str(path))
        except ImageError as err:
            failed += 1
            emit({"file": str(path), "error": err.message, "reason": err.reason})
            continue
        except OSError as err:
            failed += 1
            emit({"file": str(path), "error": f"cannot read: {err.strerror}",
                  "reason": "unreadable"})
            continue
        matched += result.matched
        emit({"file": str(path), **result_to_dict(result)})
    if failed:
        return 3
    return 1 if matched else 0


def match_to_dict(match: Match) -> dict[str, Any]:
    record: dict[str, Any] = {
        "bank": match.bank, "entry_id": match.entry_id, "external_id": match.external_id,
        "algorithm": match.algorithm, "distance": match.distance, "threshold": match.threshold,
    }
    if match.query_transform != "identity":
        record["query_transform"] = match.query_transform
    if match.query_trimmed:
        record["query_trimmed"] = True
    if match.entry_variant:
        record["entry_variant"] = match.entry_variant
    if match.tags:
        record["tags"] = list(match.tags)
    if match.metadata:
        record["metadata"] = match.metadata
    return record


def result_to_dict(result: ScanResult) -> dict[str, Any]:
    record: dict[str, Any] = {
        "matched": result.matched,
        "matches": [match_to_dict(m) for m in result.matches],
        "hashes": {c.hash.algorithm: c.hash.hex for c in result.hashes},
        "snapshot_version": result.snapshot_version,
    }
    pdq = next((c for c in result.hashes if c.hash.algorithm == "pdq"), None)
    if pdq is not None:
        record["pdq_quality"] = pdq.hash.quality
        record["low_quality"] = pdq.low_quality
    if result.suppressed:
        record["suppressed_by_allowlist"] = [match_to_dict(m) for m in result.allowlisted]
    return record
