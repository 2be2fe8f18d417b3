"""Layered versions (snapshot/layering.py): a small change is published as the base's files plus
a changes layer, and every scan matches exactly what a full snapshot of the same store state
matches, over several layered publishes and a compaction, on both store backends.

The data is real: Meta's PDQ reference haystack and needles (pdq-reference/hashes) and the MD5s
of real photos.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hashsvc.errors import SnapshotError
from hashsvc.hashing.algorithms import HashValue
from hashsvc.home import DataHome
from hashsvc.matching.delta import Delta
from hashsvc.matching.matcher import Match, Matcher, Query
from hashsvc.snapshot import FORMAT_VERSION, load, load_current, publish
from hashsvc.snapshot.layering import layer_limit
from hashsvc.snapshot.model import LAYERED_FORMAT
from hashsvc.snapshot.repository import LocalRepository
from hashsvc.store import EntrySelector, NewEntry, Store
from tests.conftest import PHOTOS, REFERENCE
from tests.test_snapshot_loading import resign

HASHES = REFERENCE / "hashes"


def _pdq(name: str) -> list[bytes]:
    return [bytes.fromhex(line) for line in (HASHES / name).read_text().split() if line]


def _md5s(count: int) -> list[bytes]:
    photos = sorted(PHOTOS.glob("*.jpg"))[:count]
    return [hashlib.md5(p.read_bytes()).digest() for p in photos]


def _flip(code: bytes, bits: int) -> bytes:
    unpacked = np.unpackbits(np.frombuffer(code, dtype=np.uint8))
    unpacked[:bits] ^= 1
    return np.packbits(unpacked).tobytes()


HAYSTACK = _pdq("haystack.txt")
NEEDLES = _pdq("needles.txt")
MD5S = _md5s(40)
# Every needle, every 20th haystack hash exactly and 12 and 30 bits away, and the photos' MD5s.
QUERIES = ([Query(HashValue("pdq", code)) for code in NEEDLES]
           + [Query(HashValue("pdq", _flip(code, bits)), source=bits)
              for code in HAYSTACK[::20] for bits in (0, 12, 30)]
           + [Query(HashValue("md5", digest)) for digest in MD5S])


def _scan(matcher: Matcher) -> list[tuple[Any, ...]]:
    """Every query's outcome, in full: matches, allowlisted and suppressed, every field."""
    def fields(matches: list[Match]) -> list[tuple[Any, ...]]:
        return [tuple(vars(m).values()) for m in matches]
    found = []
    for query in QUERIES:
        outcome = matcher.match([query])
        found.append((fields(outcome.matches), fields(outcome.allowlisted),
                      fields(outcome.suppressed)))
    return found


def _served(store: Store, snapshots: Path) -> Matcher:
    """What a server matches: the current snapshot and the store's changes since."""
    snapshot = load_current(snapshots)
    changes = store.changes_since(int(snapshot.manifest["store_revision"]))
    return Matcher(snapshot, Delta.for_snapshot(snapshot, changes, store.list_banks()))


def _check_same_as_full(store: Store, home: DataHome, tmp_path: Path, step: str
                        ) -> dict[str, Any]:
    """Publish; the served scans (and counts) must equal a full snapshot's of the same state."""
    result = publish(store, home.snapshots_dir)
    full = publish(store, LocalRepository(tmp_path / f"full-{step}"), force=True)
    assert "layer" not in full.manifest
    assert result.manifest["counts"] == full.manifest["counts"], step
    assert _scan(_served(store, home.snapshots_dir)) == _scan(_served(
        store, tmp_path / f"full-{step}")), step
    return result.manifest


def test_layered_versions_match_exactly_what_full_snapshots_match(
    any_store: Store, home: DataHome, tmp_path: Path
) -> None:
    store = any_store
    store.create_bank("known", thresholds={"pdq": 31}, tags=["t"])
    store.create_bank("strict", thresholds={"pdq": 10})
    store.create_bank("benign", kind="allowlist", thresholds={"pdq": 8})
    store.add_entries("known", [NewEntry("pdq", code, f"h{i}", {"i": i})
                                for i, code in enumerate(HAYSTACK[:1000])]
                      + [NewEntry("md5", digest, f"photo{i}")
                         for i, digest in enumerate(MD5S[:20])])
    store.add_entries("strict", [NewEntry("pdq", code, f"s{i}")
                                 for i, code in enumerate(HAYSTACK[::7])])
    base = publish(store, home.snapshots_dir)
    assert "layer" not in base.manifest and base.manifest["format"] == FORMAT_VERSION

    # 1. Adds: new PDQ hashes (some near needles), MD5s, and an allowlisted hash.
    store.add_entries("known", [NewEntry("pdq", code, f"h{1000 + i}")
                                for i, code in enumerate(HAYSTACK[1000:1230])]
                      + [NewEntry("pdq", _flip(code, 5), f"near{i}")
                         for i, code in enumerate(NEEDLES[:30])]
                      + [NewEntry("md5", digest, f"photo{20 + i}")
                         for i, digest in enumerate(MD5S[20:30])])
    store.add_entries("benign", [NewEntry("pdq", HAYSTACK[40], "stock")])
    first = _check_same_as_full(store, home, tmp_path, "adds")
    changed = store.changes_since(base.manifest["store_revision"]).changed
    assert first["format"] == LAYERED_FORMAT and first["layer"]["tombstones"] == len(changed)
    assert len(changed) > 250  # the adds, less the duplicates the store refused
    # Large enough that its PDQ side table is searched through a multi-index hash.
    assert _served(store, home.snapshots_dir).delta.layer["pdq"].index is not None
    names = set(first["files"])
    assert {n for n in names if not n.startswith("layer.")} == set(base.manifest["files"])
    for name, entry in base.manifest["files"].items():  # the base's files, byte for byte
        assert first["files"][name] == entry

    # 2. Disables: base entries and layer entries; the layer is always since the base.
    store.set_disabled("known", EntrySelector(external_ids=["h0", "h20", "h1000", "near3"]),
                       True, "false positive")
    second = _check_same_as_full(store, home, tmp_path, "disables")
    assert second["layer"]["base_revision"] == base.manifest["store_revision"]

    # 3. Removes, re-enables, and a removed hash added back under a new id.
    store.remove_entries("known", EntrySelector(external_ids=["h40", "h1001", "photo3"]))
    store.set_disabled("known", EntrySelector(external_ids=["h20", "near3"]), False)
    store.add_entries("known", [NewEntry("pdq", HAYSTACK[40], "h40-again"),
                                NewEntry("md5", MD5S[3], "photo3-again")])
    _check_same_as_full(store, home, tmp_path, "removes")

    # 4. Live changes on top of the layer, not yet published, beside the full snapshot of the
    # same revision: the served delta is the layer's under them, as if the server had read
    # every change since the base. A bank's new threshold applies at the next publish, to the
    # layer's entries as to the full snapshot's.
    store.remove_entries("known", EntrySelector(external_ids=["h1002", "h60"]))
    store.add_entries("known", [NewEntry("pdq", _flip(NEEDLES[50], 3), "live")])
    store.update_bank("known", thresholds={"pdq": 12})
    assert _scan(_served(store, home.snapshots_dir)) == _scan(_served(store, tmp_path /
                                                                      "full-removes"))
    full = publish(store, LocalRepository(tmp_path / "full-live"), force=True)
    assert full.published

    # 5. Compaction: a forced publish is full again, and matches the same.
    compacted = publish(store, home.snapshots_dir, force=True)
    assert "layer" not in compacted.manifest
    assert _scan(_served(store, home.snapshots_dir)) == _scan(_served(store, tmp_path /
                                                                      "full-live"))


def test_a_bank_change_or_a_large_change_compacts(store: Store, home: DataHome) -> None:
    store.create_bank("known")
    store.add_entries("known", [NewEntry("pdq", code) for code in HAYSTACK[:200]])
    publish(store, home.snapshots_dir)
    store.add_entries("known", [NewEntry("pdq", HAYSTACK[200])])
    assert "layer" in publish(store, home.snapshots_dir).manifest
    # Thresholds live in banks.json, which a layer keeps: a bank change is a full snapshot.
    store.update_bank("known", thresholds={"pdq": 20})
    assert "layer" not in publish(store, home.snapshots_dir).manifest
    store.create_bank("other")
    store.add_entries("other", [NewEntry("pdq", HAYSTACK[201])])
    assert "layer" not in publish(store, home.snapshots_dir).manifest
    # More changes than a layer on this base may hold.
    limit = layer_limit(202)
    store.add_entries("known", [NewEntry("pdq", code) for code in HAYSTACK[300:300 + limit]])
    assert "layer" in publish(store, home.snapshots_dir).manifest
    store.add_entries("known", [NewEntry("pdq", HAYSTACK[299])])  # limit + 1 since the base
    result = publish(store, home.snapshots_dir)
    assert "layer" not in result.manifest
    assert result.manifest["counts"]["entries"] == 203 + limit


def test_garbage_collection_keeps_the_base_files_a_layered_version_names(
    store: Store, home: DataHome
) -> None:
    store.create_bank("known")
    store.add_entries("known", [NewEntry("pdq", code, f"h{i}")
                                for i, code in enumerate(HAYSTACK[:300])])
    base = publish(store, home.snapshots_dir, keep=2)
    for i in range(3):
        store.add_entries("known", [NewEntry("pdq", HAYSTACK[300 + i], f"new{i}")])
        latest = publish(store, home.snapshots_dir, keep=2)
        assert "layer" in latest.manifest
    assert not (home.snapshots_dir / base.version).exists()  # the base version is gone ...
    snapshot = load_current(home.snapshots_dir)  # ... but not the files its layers name
    assert snapshot.version == latest.version and snapshot.entry_count == 303
    hits = Matcher(snapshot).match([Query(HashValue("pdq", HAYSTACK[302]))]).matches
    assert [m.external_id for m in hits] == ["new2"]


def test_a_damaged_layer_is_refused(store: Store, home: DataHome) -> None:
    store.create_bank("known")
    store.add_entries("known", [NewEntry("pdq", code) for code in HAYSTACK[:10]])
    publish(store, home.snapshots_dir)
    store.add_entries("known", [NewEntry("pdq", HAYSTACK[10])])
    directory = publish(store, home.snapshots_dir).path
    banks = directory / "layer.banks.npy"
    banks.unlink()  # a hard link to nothing else: the base's files are untouched
    np.save(banks, np.array([7], dtype=np.int32), allow_pickle=False)
    resign(directory)
    with pytest.raises(SnapshotError, match=r"layer.banks.npy holds indexes from 7 to 7"):
        load(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["layer"]["base_revision"] = manifest["store_revision"] + 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match=r"`layer.base_revision` \d+ is after"):
        load(directory)
    del manifest["layer"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="`layer` must be present exactly when"):
        load(directory)


def test_a_damaged_base_is_replaced_by_a_full_snapshot(store: Store, home: DataHome) -> None:
    """A layer is never built on a base that does not load: the publish compacts instead."""
    store.create_bank("known")
    store.add_entries("known", [NewEntry("pdq", code, f"h{i}")
                                for i, code in enumerate(HAYSTACK[:10])])
    base = publish(store, home.snapshots_dir)
    with (base.path / "entries.ids.npy").open("ab") as handle:
        handle.write(b"\0")
    store.add_entries("known", [NewEntry("pdq", HAYSTACK[10], "h10")])
    result = publish(store, home.snapshots_dir)
    assert "layer" not in result.manifest
    snapshot = load_current(home.snapshots_dir)
    assert snapshot.version == result.version and snapshot.entry_count == 11


def test_the_layer_benchmark_smoke() -> None:
    """loadtests/bench_layer.py, as the README runs it, at 20,000 entries and a 1,000-entry
    layer: the layered version holds them all, and its side table finds the photo's near
    duplicates beside the base's one match."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "loadtests" / "bench_layer.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(done.stdout)
    assert report["layer_entries"] == 1_000 and report["rounds"] == 5
    assert report["matches_of_the_photo_hash"] == {"empty": 1, "full": 21}
    for kind in ("match_miss", "match_hit", "scan_image"):
        assert report[kind]["full_over_empty_median"] > 0
