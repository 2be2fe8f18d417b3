"""The indexer CLI end to end, through the real console entry point in a child process."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hashsvc.config import ServerConfig
from hashsvc.home import DataHome
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, PHOTOS, run_indexer, scan_until
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


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

    # Every tenth photo: 300 unrelated photos keep the check meaningful at a tenth of the cost
    # (the whole collection's false matches are `indexer evaluate`'s to measure, not a unit test's).
    sample = sorted(PHOTOS.iterdir())[::10]
    photos = run_indexer(home, "match", *map(str, sample))
    assert photos.returncode == 0, photos.stderr
    scanned = _lines(photos.stdout)
    assert len(scanned) == len(sample) == 300
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
    # Issue 12, item 18: lines left out are not a clean import; exit 7 (documented) says so.
    assert skipped.returncode == 7 and "added 1" in skipped.stderr
    assert "1 invalid lines were rejected and not imported (exit 7)" in skipped.stderr
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
    run_indexer(home, "bank", "create", "existing", check=True)
    result = run_indexer(home, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "command",
    [("bank", "create"), ("bank", "list"), ("bank", "update"), ("bank", "delete"),
     ("bank", "enable"), ("bank", "disable"), ("import",),
     ("add-images",), ("disable",), ("enable",), ("remove",), ("publish",), ("stats",),
     ("hash",), ("match",)],
)
def test_every_command_has_help_with_an_example(home: DataHome, command: tuple[str, ...]) -> None:
    result = run_indexer(home, *command, "--help")
    assert result.returncode == 0
    assert "example:\n  indexer " in result.stdout


# ---- issue 12, item 18 ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("stats",), ("bank", "list"), ("publish",),
                                     ("import", "b", "x.csv"), ("disable", "b", "--id", "1"),
                                     ("add-images", "b", "."), ("match", "x.jpg")])
def test_commands_refuse_a_home_that_does_not_exist(
    home: DataHome, command: tuple[str, ...]
) -> None:
    """A mistyped --home is an error naming it, never a new empty store reported as empty."""
    result = run_indexer(home, *command)
    assert result.returncode == 4, result.stderr
    assert result.stderr.splitlines() == [
        f"indexer: error: no hashsvc data in {home.root} (no store.sqlite): check --home or "
        "$HASHSVC_HOME; `indexer bank create NAME` starts a new data home"]
    assert not home.root.exists()


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_home_and_every_file_in_it_are_private(home: DataHome) -> None:
    """Created 0700 with files 0600, even under a permissive umask: the store and its WAL and
    shared-memory files, snapshots, keys and the audit log, by the indexer and the server."""
    with _umask(0o022):
        run_indexer(home, "bank", "create", "bridge", check=True)
        run_indexer(home, "add-images", "bridge", str(BRIDGE_ORIGINAL), check=True)
        run_indexer(home, "publish", check=True)
        with ServerProcess(home.root) as server:
            scan = subprocess.run(
                [sys.executable, "-m", "hashsvc_client.cli", "--server", server.target,
                 "--api-key", server.keys["scanner"], str(BRIDGE_ORIGINAL)],
                capture_output=True, text=True, timeout=120)
            assert scan.returncode == 1, scan.stderr  # matched, so audited
            names = {p.name for p in home.root.iterdir()}
            assert {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "keys.toml",
                    "audit.jsonl", "snapshots"} <= names
            modes = {path: stat.S_IMODE(path.stat().st_mode)
                     for path in [home.root, *home.root.rglob("*")]}
    assert all(mode & 0o077 == 0 for mode in modes.values()), {
        str(p): oct(m) for p, m in modes.items() if m & 0o077}
    assert modes[home.root] == 0o700 and modes[home.store_path] == 0o600


def test_bank_list_columns_line_up_whatever_the_name_lengths(home: DataHome) -> None:
    long_name = "a-bank-name-longer-than-the-old-24-column-field"
    run_indexer(home, "bank", "create", "b", "--tag", "csam", "--threshold", "pdq=24",
                check=True)
    run_indexer(home, "bank", "create", long_name, "--kind", "allowlist", check=True)
    run_indexer(home, "add-images", "b", str(BRIDGE_ORIGINAL), check=True)
    lines = run_indexer(home, "bank", "list", check=True).stdout.splitlines()
    assert len(lines) == 3
    header = lines[0]
    for column in ("KIND", "ENABLED", "TAGS"):
        start = header.index(column)
        for row in lines[1:]:
            assert row[start - 2 : start] == "  " and row[start] != " ", (column, row)
    entries_end = header.index("ENTRIES") + len("ENTRIES")
    # Sorted by name; counts right-aligned under their header.
    assert [row[entries_end - 1] for row in lines[1:]] == ["0", "2"]
    assert lines[2].startswith("b  ") and "  csam pdq=24 [" in lines[2]


def closed_pipe_run(command: list[str]) -> subprocess.CompletedProcess[str]:
    """`command | head -0`, deterministically: the reader has gone before anything is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_every_cli_quietly(home: DataHome) -> None:
    for index in range(3):
        run_indexer(home, "bank", "create", f"bank-{index}", check=True)
    subprocess.run([sys.executable, "-m", "hashsvc", "keys", "add", "k", "--role", "scan",
                    "--home", str(home.root)], capture_output=True, check=True, timeout=60)
    for command in (
        [sys.executable, "-m", "indexer", "--home", str(home.root), "bank", "list"],
        [sys.executable, "-m", "indexer", "--home", str(home.root), "stats", "--json"],
        [sys.executable, "-m", "hashsvc", "keys", "list", "--home", str(home.root)],
    ):  # hashscan: tests/test_client_and_hashscan.py, against a server
        result = closed_pipe_run(command)
        assert result.returncode == 141, (command, result.stderr)
        assert result.stderr == "", (command, result.stderr)


def _hashsvc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hashsvc", *args], capture_output=True,
                          text=True, timeout=60)


def test_keys_add_list_remove_keep_the_files_comments(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("# Owned by the platform team; ticket SEC-12.\n"
                         "\n# platform A: uploads service\n[[keys]]  # since 2026\nname = \"a\"\n"
                         "roles = [\"scan\"]  # scanning only\n"
                         f"sha256 = \"{'0' * 64}\"\n")
    added = _hashsvc("keys", "add", "b", "--role", "admin", "--keys-file", str(keys_file))
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert key.startswith("hsk_")
    text = keys_file.read_text()
    assert text.startswith("# Owned by the platform team; ticket SEC-12.\n")
    assert "# platform A: uploads service" in text and "# scanning only" in text
    listed = _hashsvc("keys", "list", "--keys-file", str(keys_file))
    assert listed.stdout.splitlines() == ["a\tscan\t*", "b\tadmin\t*"]
    assert key not in listed.stdout and "0" * 64 not in listed.stdout  # no secrets
    removed = _hashsvc("keys", "remove", "a", "--keys-file", str(keys_file))
    assert removed.returncode == 0, removed.stderr
    text = keys_file.read_text()
    assert text.startswith("# Owned by the platform team; ticket SEC-12.\n")
    assert "platform A" not in text and 'name = "a"' not in text and 'name = "b"' in text
    assert _hashsvc("keys", "list", "--keys-file", str(keys_file)).stdout == "b\tadmin\t*\n"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    missing = _hashsvc("keys", "remove", "a", "--keys-file", str(keys_file))
    assert missing.returncode == 4 and "no key named 'a'" in missing.stderr
    # A layout a line edit cannot handle safely is refused, the file left as it was.
    inline = tmp_path / "inline.toml"
    inline.write_text(f'keys = [{{name = "c", roles = ["scan"], sha256 = "{"1" * 64}"}}]\n')
    before = inline.read_text()
    refused = _hashsvc("keys", "add", "d", "--role", "scan", "--keys-file", str(inline))
    assert refused.returncode == 3 and "edit the file by hand" in refused.stderr
    assert inline.read_text() == before and not list(tmp_path.glob("*.pending"))
    absent = _hashsvc("keys", "list", "--keys-file", str(tmp_path / "nope.toml"))
    assert absent.returncode == 4 and "no keys file at" in absent.stderr


def test_evaluate_says_when_it_cannot_draw_the_plots(tmp_path: Path) -> None:
    """Without matplotlib (an optional extra) the plots are skipped, saying so, not silently."""
    originals = tmp_path / "originals"
    originals.mkdir()
    for path in sorted(PHOTOS.iterdir())[:4]:
        (originals / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    no_matplotlib = ("import sys; sys.modules['matplotlib'] = None; from indexer.cli import main; "
                     "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", no_matplotlib, "evaluate", str(originals), "--transformed", "1",
         "--transforms", "jpeg_q90", "--methods", "pdq", "--out", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "warning: plots will not be drawn: matplotlib is not installed" in result.stderr
    assert "warning: no plots were drawn: matplotlib is not installed" in result.stderr
    assert "Not drawn: matplotlib is not installed" in (out / "report.md").read_text()
    assert not list(out.glob("*.png"))


def test_readme_states_the_reload_interval_the_code_uses() -> None:
    readme = (ROOT / "README.md").read_text()
    row = re.search(r"^\| `--reload-interval` / `RELOAD_INTERVAL` \| ([0-9.]+) s \|", readme,
                    re.MULTILINE)
    assert row is not None
    assert float(row.group(1)) == ServerConfig(home=Path()).reload_interval


# ---- issue 12, defect 17: what is live, what a publish does, and staging -----------------------


def test_staged_bank_serves_nothing_until_enabled_then_goes_live_without_a_publish(
    home: DataHome,
) -> None:
    from hashsvc_client import Client

    pen = IMAGES / "pen-and-coaster.png"
    run_indexer(home, "bank", "create", "live", check=True)
    with ServerProcess(home.root) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        staged = run_indexer(home, "bank", "create", "review", "--staged", check=True)
        assert "none of it is served until `indexer bank enable review`" in staged.stderr
        added = run_indexer(home, "add-images", "review", str(BRIDGE_ORIGINAL), check=True)
        assert "staged (disabled)" in added.stderr and "publish to take effect" not in added.stderr
        # Published while staged: the bank is not in this snapshot, and enabling it must still
        # reach the servers through their delta.
        version = json.loads(run_indexer(home, "publish", check=True).stdout)["version"]
        live = run_indexer(home, "add-images", "live", str(pen), check=True)
        assert "live on running servers within about a second" in live.stderr
        # Once the later change to `live` is served, the server has seen the staged entries too.
        assert scan_until(client, pen.read_bytes(), matched=True).snapshot_version == version
        assert not client.scan_image(BRIDGE_ORIGINAL.read_bytes()).matched

        stats = json.loads(run_indexer(home, "stats", "--json", check=True).stdout)
        assert stats["store"]["staged_banks"] == ["review"]
        assert stats["served"] == {"entries": 2, "by_bank": {"live": {"md5": 1, "pdq": 1}}}
        assert stats["snapshot"]["entries_changed_since"] == 2

        enabled = run_indexer(home, "bank", "enable", "review", check=True)
        assert "live on running servers within about a second" in enabled.stderr
        result = scan_until(client, BRIDGE_ORIGINAL.read_bytes(), matched=True)
        assert result.matches[0].bank == "review" and result.snapshot_version == version
        stats = json.loads(run_indexer(home, "stats", "--json", check=True).stdout)
        assert stats["served"]["entries"] == 4 and stats["store"]["staged_banks"] == []
        assert "served: 4 entries" in run_indexer(home, "stats", check=True).stdout

        run_indexer(home, "bank", "disable", "review", check=True)
        scan_until(client, BRIDGE_ORIGINAL.read_bytes(), matched=False)
        disabled = run_indexer(home, "disable", "live", "--external-id", pen.name, check=True)
        assert "disabled 2 entries in 'live': live on running servers" in disabled.stderr
        scan_until(client, pen.read_bytes(), matched=False)
