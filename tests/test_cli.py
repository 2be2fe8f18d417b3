"""The indexer CLI end to end, through the real console entry point in a child process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hashsvc.home import DataHome
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, PHOTOS, run_indexer


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_bank_from_one_image_matches_every_edit_and_no_unrelated_photo(home: DataHome) -> None:
    run_indexer(home, "bank", "create", "bridge", "--tag", "demo", check=True)
    added = run_indexer(home, "add-images", "bridge", str(BRIDGE_ORIGINAL), check=True)
    assert "added 2 entries" in added.stderr  # pdq + md5 by default
    run_indexer(home, "publish", check=True)

    edits = sorted(p for p in (IMAGES / "bridge-mods").iterdir() if p != BRIDGE_ORIGINAL)
    result = run_indexer(home, "match", *map(str, edits))
    assert result.returncode == 1, result.stderr  # 1 = something matched
    records = _lines(result.stdout)
    assert len(records) == len(edits) == 11
    for record in records:
        assert record["matched"], record["file"]
        (match,) = record["matches"]
        assert match["bank"] == "bridge" and match["algorithm"] == "pdq"
        assert 0 <= match["distance"] <= match["threshold"] == 31
        assert match["external_id"] == "aaa-orig.jpg" and match["tags"] == ["demo"]

    photos = run_indexer(home, "match", str(PHOTOS))
    assert photos.returncode == 0, photos.stderr
    scanned = _lines(photos.stdout)
    assert len(scanned) == 3000
    assert not [r["file"] for r in scanned if r["matched"]]


def test_rotated_copy_matches_through_a_dihedral_query(home: DataHome) -> None:
    run_indexer(home, "bank", "create", "bridge", check=True)
    run_indexer(home, "add-images", "bridge", str(IMAGES / "dih" / "bridge-1-original.jpg"),
                "--algorithms", "pdq", check=True)
    run_indexer(home, "publish", check=True)
    rotated = str(IMAGES / "dih" / "bridge-2-rotate-90.jpg")
    (record,) = _lines(run_indexer(home, "match", rotated).stdout)
    assert record["matches"][0]["query_transform"] == "rotate_270"
    plain = run_indexer(home, "match", "--no-dihedral", rotated)
    assert plain.returncode == 0 and not _lines(plain.stdout)[0]["matched"]


def test_hash_prints_every_algorithm_and_reports_bad_files(home: DataHome, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(BRIDGE_ORIGINAL.read_bytes()[:3000])
    result = run_indexer(home, "hash", str(IMAGES / "misc" / "small.jpg"), str(broken))
    assert result.returncode == 3
    good, bad = _lines(result.stdout)
    assert set(good) >= {"pdq", "pdq_quality", "phash", "dhash", "md5", "sha256"}
    assert good["pdq_quality"] == 0 and good["pdq_low_quality"] is True
    assert bad["reason"] == "truncated" and "broken.jpg" in str(bad["error"])


def test_import_then_match_then_disable(home: DataHome, tmp_path: Path) -> None:
    hashes = _lines(run_indexer(home, "hash", str(BRIDGE_ORIGINAL), check=True).stdout)[0]
    listing = tmp_path / "list.csv"
    listing.write_text(f"hash,algorithm,external_id\n{hashes['pdq']},pdq,case-9\n")
    run_indexer(home, "bank", "create", "ncmec", check=True)
    imported = run_indexer(home, "import", "ncmec", str(listing), check=True)
    assert "added 1, duplicates 0, rejected 0" in imported.stderr
    again = run_indexer(home, "import", "ncmec", str(listing), check=True)
    assert "added 0, duplicates 1" in again.stderr
    run_indexer(home, "publish", check=True)
    assert run_indexer(home, "match", str(BRIDGE_ORIGINAL)).returncode == 1

    run_indexer(home, "disable", "ncmec", "--external-id", "case-9", "--reason", "fp",
                check=True)
    stats = json.loads(run_indexer(home, "stats", "--json", check=True).stdout)
    assert stats["store"]["disabled"] == 1 and stats["snapshot"]["up_to_date"] is False
    run_indexer(home, "publish", check=True)
    assert run_indexer(home, "match", str(BRIDGE_ORIGINAL)).returncode == 0


def test_bad_line_fails_the_import_with_file_and_line(home: DataHome, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("a" * 64 + "\n" + "not-a-hash\n")
    run_indexer(home, "bank", "create", "b", check=True)
    result = run_indexer(home, "import", "b", str(listing), "--algorithm", "pdq")
    assert result.returncode == 3
    assert f"{listing}:2: invalid pdq hash 'not-a-hash'" in result.stderr
    assert json.loads(run_indexer(home, "stats", "--json").stdout)["store"]["entries"] == 0
    rejects = tmp_path / "rejects.txt"
    skipped = run_indexer(home, "import", "b", str(listing), "--algorithm", "pdq",
                          "--skip-invalid", "--rejects", str(rejects))
    assert skipped.returncode == 0 and "added 1" in skipped.stderr
    assert rejects.read_text().startswith(f"{listing}:2: invalid pdq hash")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("bank", "delete", "nope", "--yes"), 4, "no bank named 'nope'"),
        (("bank", "delete", "nope"), 3, "add --yes"),
        (("match", "x.jpg"), 6, "no snapshot has been published"),
        (("bank", "create", "bad name"), 3, "invalid bank name"),
        (("bank", "create", "b", "--threshold", "pdq"), 3, "expected ALGORITHM=BITS"),
        (("import", "nope", "x.csv"), 3, "x.csv: no such file"),
        (("add-images", "nope", "."), 4, "no bank named 'nope'"),
    ],
)
def test_errors_map_to_documented_exit_codes(
    home: DataHome, args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_indexer(home, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "command",
    [("bank", "create"), ("bank", "list"), ("bank", "update"), ("bank", "delete"), ("import",),
     ("add-images",), ("disable",), ("enable",), ("remove",), ("publish",), ("stats",),
     ("hash",), ("match",)],
)
def test_every_command_has_help_with_an_example(home: DataHome, command: tuple[str, ...]) -> None:
    result = run_indexer(home, *command, "--help")
    assert result.returncode == 0
    assert "example:\n  indexer " in result.stdout
