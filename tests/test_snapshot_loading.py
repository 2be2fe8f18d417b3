"""Loading refuses any snapshot it could not serve correctly, and says what is wrong (issue 12).

Each bad snapshot starts as a real one published from a real store; the damage is then re-signed
(sizes and checksums recomputed into the manifest), as a buggy tool or a hand edit would leave it,
so that only the manifest's schema and the structural checks stand between it and a server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hashsvc.errors import SnapshotError
from hashsvc.home import DataHome
from hashsvc.snapshot import load, publish
from hashsvc.store import NewEntry, Store


def _publish(store: Store, home: DataHome) -> Path:
    """Two banks, 6 entries: 5 PDQ (4 distinct hashes) and 1 MD5."""
    store.create_bank("a", thresholds={"pdq": 20})
    store.create_bank("b", kind="allowlist")
    store.add_entries("a", [NewEntry("pdq", bytes([n]) * 32, f"a{n}", {"n": n}) for n in range(4)]
                      + [NewEntry("md5", bytes([7]) * 16, "m")])
    store.add_entries("b", [NewEntry("pdq", bytes([1]) * 32, "shared-hash")])
    return publish(store, home.snapshots_dir).path


def _manifest(directory: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((directory / "manifest.json").read_text())
    return manifest


def _write_manifest(directory: Path, manifest: object) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest))


def resign(directory: Path) -> None:
    """Make every listed file's size and sha256 in the manifest match the file as it now is."""
    manifest = _manifest(directory)
    for name, entry in manifest["files"].items():
        data = (directory / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    _write_manifest(directory, manifest)


def _rewrite(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        array = np.load(directory / name)
        np.save(directory / name, change(array.copy()), allow_pickle=False)
    return edit


def _replace(name: str, text: str) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        (directory / name).write_text(text)
    return edit


def _set(array: np.ndarray, index: int, value: int) -> np.ndarray:
    array[index] = value
    return array


def _edit_manifest(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    """`change` edits the manifest in place (returning None) or returns what replaces it."""
    def edit(directory: Path) -> None:
        manifest = _manifest(directory)
        replacement = change(manifest)
        _write_manifest(directory, manifest if replacement is None else replacement)
    return edit


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        for key in keys[:-1]:
            manifest = manifest[key]
        del manifest[keys[-1]]
    return change


def test_a_copy_under_another_name_is_that_version(store: Store, home: DataHome) -> None:
    original = _publish(store, home)
    copy = shutil.copytree(original, home.snapshots_dir / "copied-by-hand")
    snapshot = load(copy)
    assert snapshot.version == "copied-by-hand" and snapshot.entry_count == 6
    assert snapshot.manifest["version"] == original.name  # where it came from, not what it is


# A damaged file, re-signed so that its checksum matches: each must be refused, by name.
RESIGNED_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "fewer entry ids than counted": (
        _rewrite("entries.ids.npy", lambda a: a[:-1]),
        r"entries.ids.npy holds 5 int64; expected 6 int64 \(from counts.entries\)"),
    "entry ids of another dtype": (
        _rewrite("entries.ids.npy", lambda a: a.astype(np.int32)),
        r"entries.ids.npy holds 6 int32; expected 6 int64"),
    "entry ids in two dimensions": (
        _rewrite("entries.ids.npy", lambda a: a.reshape(2, 3)),
        r"entries.ids.npy holds 2×3 int64; expected 6 int64"),
    "a bank index past banks.json": (
        _rewrite("entries.banks.npy", lambda a: _set(a, 0, 7)),
        r"entries.banks.npy holds indexes from 0 to 7, but banks.json has only 2"),
    "a posting past the last entry": (
        _rewrite("pdq.postings.rows.npy", lambda a: _set(a, -1, 99)),
        r"pdq.postings.rows.npy holds indexes from 0 to 99, but counts.entries has only 6"),
    "postings that miss an entry": (
        _rewrite("pdq.postings.rows.npy", lambda a: a[:-1]),
        r"pdq.postings.rows.npy holds 4 int64; expected 5 int64"),
    "posting offsets that do not end at the count": (
        _rewrite("pdq.postings.offsets.npy", lambda a: _set(a, -1, 3)),
        r"pdq.postings.offsets.npy must rise from 0 to 5 in 5 steps"),
    "one PDQ code fewer than the postings": (
        _rewrite("pdq.mih.codes.npy", lambda a: a[:-1]),
        r"pdq.mih.codes.npy holds 3×32 uint8; expected 4×32 uint8"),
    "an index that does not fit its codes": (
        _rewrite("pdq.mih.ids.npy", lambda a: a[:, :-1]),
        r"pdq.mih.\*.npy do not form an index"),
    "an index position past the codes": (
        _rewrite("pdq.mih.ids.npy", lambda a: _set(a.reshape(-1), 0, 999).reshape(a.shape)),
        r"pdq.mih.ids.npy holds positions past the 4 codes"),
    "MD5 codes of the wrong width": (
        _rewrite("md5.codes.npy", lambda a: a.astype("S8")),
        r"md5.codes.npy holds 1 \|S8; expected 1 \|S16"),
    "metadata offsets past the blob": (
        _rewrite("entries.metadata.offsets.npy", lambda a: _set(a, -1, a[-1] + 10)),
        r"entries.metadata.offsets.npy must rise from 0 to \d+ in 7 steps"),
    "a bank without a name": (
        _replace("banks.json", '[{"kind": "match"}]'),
        r"banks.json is malformed \(KeyError: 'name'\)"),
    "a file read but not listed": (
        _edit_manifest(_drop("files", "entries.ids.npy")),
        r"entries.ids.npy is not listed in manifest.json"),
    "counts that disagree with each other": (
        _edit_manifest(lambda m: m["counts"].update(entries=7)),
        r"`counts.by_algorithm` adds up to 6, but `counts.entries` is 7"),
    "a bank counted that banks.json lacks": (
        _edit_manifest(lambda m: m["counts"]["by_bank"].update(
            ghost=m["counts"]["by_bank"].pop("b"))),
        r"the manifest counts entries of banks that banks.json lacks: ghost"),
}


@pytest.mark.parametrize("damage", RESIGNED_DAMAGE, ids=list(RESIGNED_DAMAGE))
def test_a_resigned_snapshot_whose_arrays_disagree_is_refused(
    store: Store, home: DataHome, damage: str
) -> None:
    directory = _publish(store, home)
    edit, message = RESIGNED_DAMAGE[damage]
    edit(directory)
    resign(directory)
    with pytest.raises(SnapshotError, match=message) as refused:
        load(directory)
    assert refused.value.message.startswith("snapshot ") and directory.name in refused.value.message


# Manifests of the wrong shape: each must be a SnapshotError naming the key, never a KeyError.
MALFORMED_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "a JSON array": (lambda m: [m], r"must be a JSON object, got a JSON array"),
    "a string": (lambda m: "manifest", r'must be a JSON object, got "manifest"'),
    "no files": (_drop("files"), r"`files` must be an object .* got nothing"),
    "files as a list": (lambda m: m.update(files=list(m["files"])),
                        r"`files` must be an object .* got a JSON array"),
    "a file outside the directory": (
        lambda m: m["files"].update({"../store.sqlite": m["files"]["banks.json"]}),
        r"`files` lists '../store.sqlite', which is not a file of the snapshot directory"),
    "a checksum that is not hex": (
        lambda m: m["files"]["banks.json"].update(sha256="zz"),
        r"`files.banks.json.sha256` must be 64 lowercase hex digits"),
    "no counts": (_drop("counts"), r"`counts` must be an object, got nothing"),
    "a count that is a string": (lambda m: m["counts"].update(entries="6"),
                                 r'`counts.entries` must be a non-negative integer, got "6"'),
    "a count that is true": (lambda m: m["counts"]["by_algorithm"].update(md5=True),
                             r"`counts.by_algorithm.md5` must be a non-negative integer"),
    "an unknown algorithm": (lambda m: m["counts"]["by_algorithm"].update(sha1=0),
                             r"`counts.by_algorithm` names an unknown algorithm 'sha1'"),
    "no store revision": (_drop("store_revision"),
                          r"`store_revision` must be a non-negative integer, got nothing"),
    "a bad creation time": (lambda m: m.update(created_at="yesterday"),
                            r"`created_at` is not an ISO 8601 time: 'yesterday'"),
    "variants that are not a list": (lambda m: m.update(variants="crop"),
                                     r"`variants` must be a non-empty list of strings"),
    "an unknown format": (lambda m: m.update(format=99), r"format 99 is not supported"),
}


@pytest.mark.parametrize("shape", MALFORMED_MANIFESTS, ids=list(MALFORMED_MANIFESTS))
def test_a_manifest_of_the_wrong_shape_is_refused_by_key(
    store: Store, home: DataHome, shape: str
) -> None:
    directory = _publish(store, home)
    change, message = MALFORMED_MANIFESTS[shape]
    _edit_manifest(change)(directory)
    with pytest.raises(SnapshotError, match=message):
        load(directory)

