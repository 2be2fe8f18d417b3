"""Reading a snapshot's manifest and checking its shape before anything relies on it.

A manifest that is valid JSON but the wrong shape (an array, a missing `files`, a count that is a
string) must be a refused snapshot with a message naming the key, never a KeyError or
AttributeError deep in the loader: the person reading the refusal has to know what to fix, and
`KeyError: 'files'` does not say. The counts must also agree with each other, since the loader
checks every array against them.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from hashsvc.errors import SnapshotError
from hashsvc.hashing.algorithms import ALGORITHMS
from hashsvc.snapshot.model import FORMAT_VERSION, LAYERED_FORMAT, MANIFEST, READABLE_FORMATS

_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the snapshot in `directory`, checked against the schema below."""
    try:
        text = (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {directory}: {MANIFEST} is missing") from None
    except OSError as err:
        raise SnapshotError(f"snapshot {directory}: {MANIFEST} cannot be read: {err}") from None
    return parse_manifest(text, f"snapshot {directory}: {MANIFEST}")


def parse_manifest(text: bytes, where: str) -> dict[str, Any]:
    """A manifest from its bytes (a file, or an object in a bucket), checked; `where` names it
    in the refusal."""
    try:
        manifest: object = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise SnapshotError(f"{where} cannot be read: {err}") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise SnapshotError(f"{where} is not valid JSON: {err}") from None
    return _checked(manifest, where)


def _checked(manifest: object, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise SnapshotError(f"{where}: must be a JSON object, got {_kind(manifest)}")
    if manifest.get("format") not in READABLE_FORMATS:
        raise SnapshotError(f"{where}: format {manifest.get('format')!r} is not supported "
                            f"(this hashsvc reads formats {FORMAT_VERSION} and "
                            f"{LAYERED_FORMAT})")
    for key in ("version", "created_at"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise SnapshotError(f"{where}: `{key}` must be a non-empty string")
    try:
        dt.datetime.fromisoformat(manifest["created_at"])
    except ValueError:
        raise SnapshotError(f"{where}: `created_at` is not an ISO 8601 time: "
                            f"{manifest['created_at'][:40]!r}") from None
    _count(manifest.get("store_revision"), where, "store_revision")
    variants = manifest.get("variants", [""])
    if (not isinstance(variants, list) or not variants
            or not all(isinstance(v, str) for v in variants)):
        raise SnapshotError(f"{where}: `variants` must be a non-empty list of strings")
    _check_counts(manifest.get("counts"), where)
    _check_files(manifest.get("files"), where)
    if (manifest["format"] == LAYERED_FORMAT) != ("layer" in manifest):
        raise SnapshotError(f"{where}: `layer` must be present exactly when `format` is "
                            f"{LAYERED_FORMAT}")
    if "layer" in manifest:
        _check_layer(manifest["layer"], manifest["store_revision"], where)
    return manifest


def _check_layer(layer: object, revision: int, where: str) -> None:
    """`layer` (a layered version, layering.py): the base's revision and counts, and the
    layer's own counts and variant names."""
    if not isinstance(layer, dict):
        raise SnapshotError(f"{where}: `layer` must be an object, got {_kind(layer)}")
    base_revision = _count(layer.get("base_revision"), where, "layer.base_revision")
    if base_revision > revision:
        raise SnapshotError(f"{where}: `layer.base_revision` {base_revision} is after the "
                            f"version's `store_revision` {revision}")
    _check_counts(layer.get("base_counts"), where, "layer.base_counts")
    _count(layer.get("tombstones"), where, "layer.tombstones")
    _count_map(layer.get("by_algorithm"), where, "layer.by_algorithm")
    variants = layer.get("variants")
    if (not isinstance(variants, list) or not variants
            or not all(isinstance(v, str) for v in variants)):
        raise SnapshotError(f"{where}: `layer.variants` must be a non-empty list of strings")


def _check_counts(counts: object, where: str, key: str = "counts") -> None:
    """`counts`: entries = sum(by_algorithm) and, per algorithm, sum over banks = by_algorithm."""
    if not isinstance(counts, dict):
        raise SnapshotError(f"{where}: `{key}` must be an object, got {_kind(counts)}")
    entries = _count(counts.get("entries"), where, f"{key}.entries")
    by_algorithm = _count_map(counts.get("by_algorithm"), where, f"{key}.by_algorithm")
    by_bank = counts.get("by_bank")
    if not isinstance(by_bank, dict):
        raise SnapshotError(f"{where}: `{key}.by_bank` must be an object, got {_kind(by_bank)}")
    per_bank = [_count_map(value, where, f"{key}.by_bank.{bank[:40]}")
                for bank, value in by_bank.items()]
    if sum(by_algorithm.values()) != entries:
        raise SnapshotError(f"{where}: `{key}.by_algorithm` adds up to "
                            f"{sum(by_algorithm.values())}, but `{key}.entries` is {entries}")
    for algorithm in {name for counts in per_bank for name in counts} | set(by_algorithm):
        banks_total = sum(counts.get(algorithm, 0) for counts in per_bank)
        if banks_total != by_algorithm.get(algorithm, 0):
            raise SnapshotError(
                f"{where}: the banks' {algorithm} counts add up to {banks_total}, but "
                f"`{key}.by_algorithm.{algorithm}` is {by_algorithm.get(algorithm, 0)}")


def _check_files(files: object, where: str) -> None:
    """`files`: plain file names of this directory, each with a sha256 and a size."""
    if not isinstance(files, dict):
        raise SnapshotError(f"{where}: `files` must be an object naming every file and its "
                            f"sha256, got {_kind(files)}")
    for name, entry in files.items():
        if Path(name).name != name or name.startswith(".") or name == MANIFEST:
            raise SnapshotError(f"{where}: `files` lists {name[:80]!r}, which is not a file of "
                                f"the snapshot directory")
        if not isinstance(entry, dict) or not _SHA256.fullmatch(str(entry.get("sha256"))):
            raise SnapshotError(f"{where}: `files.{name}.sha256` must be 64 lowercase hex digits")
        _count(entry.get("bytes"), where, f"files.{name}.bytes")


def _count_map(value: object, where: str, key: str) -> dict[str, int]:
    """An object of algorithm name -> count."""
    if not isinstance(value, dict):
        raise SnapshotError(f"{where}: `{key}` must be an object, got {_kind(value)}")
    for algorithm, count in value.items():
        if algorithm not in ALGORITHMS:
            raise SnapshotError(f"{where}: `{key}` names an unknown algorithm {algorithm[:40]!r}")
        _count(count, where, f"{key}.{algorithm}")
    return value


def _count(value: object, where: str, key: str) -> int:
    # bool is an int to Python, but `true` is no count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SnapshotError(f"{where}: `{key}` must be a non-negative integer, got "
                            f"{_kind(value)}")
    return value


def _kind(value: object) -> str:
    """What was found instead, short enough for a log line whatever the manifest holds."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    return f"{json.dumps(value)[:40]}" if value is not None else "nothing"
