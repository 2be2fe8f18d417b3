"""A SIGKILL in the middle of an import or a publish loses nothing and corrupts nothing."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hashsvc.home import DataHome
from hashsvc.snapshot import current_version, load_current, publish
from hashsvc.store import NewEntry, SqliteStore


def _start_indexer(home: DataHome, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer", "--home", str(home.root), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, "finished before it could be killed: make the job bigger"
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _seed(home: DataHome, entries: int) -> str:
    """A store with one published bank; returns the published version."""
    with SqliteStore(home.store_path) as store:
        store.create_bank("seed")
        store.add_entries("seed", (NewEntry("pdq", os.urandom(32), str(n)) for n in range(entries)))
        return publish(store, home.snapshots_dir).version


def test_sigkill_during_import_leaves_the_store_unchanged(home: DataHome, tmp_path: Path) -> None:
    version = _seed(home, 100)
    listing = tmp_path / "big.txt"
    lines = 600_000
    text = os.urandom(32 * lines).hex()
    listing.write_text("\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\n")

    process = _start_indexer(home, "import", "seed", str(listing), "--algorithm", "pdq")
    wal = Path(f"{home.store_path}-wal")
    # Uncommitted pages reach the WAL once the page cache fills: the import is mid-way.
    _kill_when(process, lambda: wal.exists() and wal.stat().st_size > 8 * 2**20)

    with SqliteStore(home.store_path) as store:
        assert store.stats().entries == 100
    db = sqlite3.connect(home.store_path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    assert current_version(home.snapshots_dir) == version
    assert load_current(home.snapshots_dir).entry_count == 100


def test_sigkill_during_publish_leaves_current_intact(home: DataHome) -> None:
    version = _seed(home, 300_000)
    with SqliteStore(home.store_path) as store:
        store.add_entries("seed", [NewEntry("pdq", os.urandom(32), "new")])

    process = _start_indexer(home, "publish")
    snapshots = home.snapshots_dir
    _kill_when(process, lambda: any(p.name.startswith(".tmp-") for p in snapshots.iterdir()))

    assert current_version(snapshots) == version
    assert load_current(snapshots).entry_count == 300_000
    # The next publish clears the half-written directory and succeeds.
    with SqliteStore(home.store_path) as store:
        result = publish(store, snapshots)
    assert result.published and result.manifest["counts"]["entries"] == 300_001
    assert not any(p.name.startswith(".tmp-") for p in snapshots.iterdir())


def test_what_a_publish_killed_while_removing_versions_leaves_is_swept(home: DataHome) -> None:
    """A kill during removal can leave a `.deleting-*` tombstone (how versions are removed now) or,
    from a publisher before tombstones, a version directory whose manifest.json went first. Both
    are swept by the next publish, even one that finds nothing new to publish (issue 12, defect
    12). The states are built by hand: a kill landing inside a few milliseconds of unlinks cannot
    be aimed without making the test depend on timing."""
    version = _seed(home, 100)
    snapshots = home.snapshots_dir
    half_deleted = Path(shutil.copytree(snapshots / version,
                                        snapshots / "20200101T000000.000000Z-r1"))
    for name in ("manifest.json", "banks.json", "entries.ids.npy"):
        (half_deleted / name).unlink()
    tombstone = Path(shutil.copytree(snapshots / version,
                                     snapshots / ".deleting-20200102T000000.000000Z-r1"))
    (tombstone / "manifest.json").unlink()
    (snapshots / "operator-notes").mkdir()  # not a version's name: not ours to delete

    with SqliteStore(home.store_path) as store:
        assert not publish(store, snapshots).published
    assert sorted(p.name for p in snapshots.iterdir() if p.is_dir()) == [
        version, "operator-notes"]
    assert load_current(snapshots).entry_count == 100


def test_old_versions_are_removed_through_tombstones(home: DataHome) -> None:
    """After publishes that removed versions, nothing of them is left, tombstones included; a
    copy made by hand is neither counted among the versions kept nor removed."""
    first = _seed(home, 10)
    shutil.copytree(home.snapshots_dir / first, home.snapshots_dir / "kept-by-hand")
    with SqliteStore(home.store_path) as store:
        versions = [publish(store, home.snapshots_dir, force=True, keep=2).version
                    for _ in range(3)]
    assert sorted(p.name for p in home.snapshots_dir.iterdir() if p.is_dir()) == [
        *versions[-2:], "kept-by-hand"]
