"""Importing hash lists: every format, strict line errors, transactional files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashsvc.errors import HashsvcError, ImportFileError
from hashsvc.home import DataHome
from hashsvc.store import EntrySelector, SqliteStore, Store
from indexer.hashlists import detect_format
from indexer.importing import ImportReport, import_file
from tests.conftest import run_indexer

PDQ_A = "f8f8f0cce0f4e84d0e370a22028f67f0b36e2ed596623e1d33e6339c4e9c9b22"
PDQ_B = "d8f8f0cee0f4a84f0637022a078f67f0b36e2ed596621e1d33e6339c4e9c9b22"
MD5 = "D41D8CD98F00B204E9800998ECF8427E"  # NCMEC lists ship upper-case MD5


@pytest.fixture
def bank(store: Store) -> Store:
    store.create_bank("list")
    return store


def _import(
    store: Store, path: Path, *, algorithm: str | None = None, skip_invalid: bool = False
) -> ImportReport:
    return import_file(store, "list", path, detect_format(path), algorithm=algorithm,
                       skip_invalid=skip_invalid)


def test_csv_with_header_extra_columns_become_metadata(bank: Store, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "\ufeffHash,Algorithm,ID,Metadata,Source\n"
        f"{PDQ_A},pdq,case-1,\"{{\"\"category\"\": \"\"A1\"\"}}\",gifct\n"
        f"{MD5},md5,case-2,,ncmec\n"
        "\n"
    )
    report = _import(bank, path)
    assert (report.added, report.duplicates, report.rejected) == (2, 0, [])
    first, second = bank.get_entry(1), bank.get_entry(2)
    assert (first.algorithm, first.hash.hex(), first.external_id) == ("pdq", PDQ_A, "case-1")
    assert first.metadata == {"category": "A1", "source": "gifct"}
    assert (second.algorithm, second.hash.hex()) == ("md5", MD5.lower())


def test_tsv_jsonl_and_text(bank: Store, tmp_path: Path) -> None:
    tsv = tmp_path / "list.tsv"
    tsv.write_text(f"hash\texternal_id\n{PDQ_A}\tt1\n\t\n")  # a row of empty cells is skipped
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"hash": PDQ_B, "algorithm": "pdq", "external_id": 7,
                                 "metadata": {"k": [1, 2]}}) + "\n")
    txt = tmp_path / "list.txt"
    txt.write_text(f"# md5 list\n{MD5}\n\n")
    assert _import(bank, tsv, algorithm="pdq").added == 1
    assert _import(bank, jsonl).added == 1
    assert _import(bank, txt, algorithm="md5").added == 1
    entries = {e.hash.hex(): e for e in map(bank.get_entry, (1, 2, 3))}
    assert entries[PDQ_B].external_id == "7" and entries[PDQ_B].metadata == {"k": [1, 2]}
    with pytest.raises(HashsvcError, match=r"pass --algorithm"):
        _import(bank, txt)


def test_a_malformed_line_fails_the_file_naming_every_bad_line(
    bank: Store, tmp_path: Path
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "hash,algorithm\n"
        f"{PDQ_A},pdq\n"
        f"{PDQ_A[:-1]},pdq\n"          # line 3: short
        f"{PDQ_B},sift\n"              # line 4: unknown algorithm
        f"{PDQ_B},pdq,extra\n"         # line 5: column count
        f"{'g' * 64},pdq\n"            # line 6: not hex
    )
    revision = bank.revision()
    with pytest.raises(ImportFileError) as err:
        _import(bank, path)
    message = str(err.value)
    assert "nothing from this file was stored" in message
    for expected in (
        f"{path}:3: invalid pdq hash", "expected 64 hex digits, got 63",
        f"{path}:4: unknown algorithm 'sift'",
        f"{path}:5: expected 2 columns, found 3",
        f"{path}:6: invalid pdq hash 'gggg", "not hexadecimal",
    ):
        assert expected in message
    assert [p.line for p in err.value.problems] == [3, 4, 5, 6]
    assert bank.stats().entries == 0 and bank.revision() == revision


def test_skip_invalid_imports_the_good_lines_and_lists_the_bad(
    bank: Store, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        json.dumps({"hash": PDQ_A, "algorithm": "pdq"}).encode() + b"\n"
        + b"{not json\n"
        + b"[1, 2]\n"
        + b'{"hash": "\xff\xfe", "algorithm": "pdq"}\n'
        + json.dumps({"algorithm": "pdq"}).encode() + b"\n"
        + json.dumps({"hash": PDQ_B, "algorithm": "pdq", "metadata": 5}).encode() + b"\n"
    )
    report = _import(bank, path, skip_invalid=True)
    assert report.added == 1
    reasons = {p.line: p.reason for p in report.rejected}
    assert reasons[2].startswith("not valid JSON")
    assert reasons[3] == "expected a JSON object per line"
    assert reasons[4].startswith("not valid UTF-8")
    assert reasons[5] == "missing hash"
    assert reasons[6] == "metadata must be a JSON object"


def test_reimporting_the_same_list_adds_nothing(bank: Store, tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text(f"{PDQ_A}\n{PDQ_B}\n{PDQ_A}\n")
    first = _import(bank, path, algorithm="pdq")
    assert (first.added, first.duplicates) == (2, 1)
    second = _import(bank, path, algorithm="pdq")
    assert (second.added, second.duplicates) == (0, 3)
    assert bank.stats().entries == 2


def test_format_detection(tmp_path: Path) -> None:
    assert detect_format(tmp_path / "a.NDJSON") == "jsonl"
    assert detect_format(tmp_path / "a.dat", "tsv") == "tsv"
    with pytest.raises(HashsvcError, match=r"pass --format"):
        detect_format(tmp_path / "a.dat")


def test_missing_hash_column(bank: Store, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("digest,algorithm\nabc,md5\n")
    with pytest.raises(HashsvcError, match=r"list.csv:1: the header has no 'hash' column"):
        _import(bank, path)


def _large_csv(path: Path, lines: int, bad: dict[int, str] | None = None,
               header: str = "hash,algorithm,external_id") -> Path:
    """A CSV large enough (> 16 MiB) to be parsed in a second process; `bad` replaces lines
    (1-based, the header is line 1)."""
    rows = [header] + [f"{n.to_bytes(32, 'big').hex()},pdq,case-{n:09d}-{'x' * 40}"
                       for n in range(lines)]
    for number, text in (bad or {}).items():
        rows[number - 1] = text
    path.write_text("\n".join(rows) + "\n")
    assert path.stat().st_size > 16 << 20
    return path


def test_a_large_file_is_parsed_in_a_second_process_with_the_same_results(
    bank: Store, tmp_path: Path
) -> None:
    path = _large_csv(tmp_path / "large.csv", 150_000, bad={70_002: f"{PDQ_A},pdq,dup",
                                                            70_003: f"{PDQ_A},pdq,dup-2"})
    report = _import(bank, path)
    assert (report.added, report.duplicates, report.rejected) == (149_999, 1, [])
    (entry,) = bank.find_entries("list", EntrySelector(external_ids=["case-000149999-" + "x" * 40]))
    assert entry.hash == (149_999).to_bytes(32, "big")
    # A bad line far into the file: named by file and line, and nothing is stored.
    revision = bank.revision()
    bad = _large_csv(tmp_path / "bad.csv", 150_000, bad={120_001: f"{PDQ_A[:-1]},pdq,short"})
    with pytest.raises(ImportFileError) as err:
        _import(bank, bad)
    assert [p.line for p in err.value.problems] == [120_001]
    assert f"{bad}:120001: invalid pdq hash" in str(err.value)
    assert bank.revision() == revision
    # An error the parser process raises (here, the header's) reaches the caller as it is.
    headless = _large_csv(tmp_path / "headless.csv", 150_000, header="digest,algorithm,id")
    with pytest.raises(HashsvcError, match=r"headless.csv:1: the header has no 'hash' column"):
        _import(bank, headless)


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever adopted it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_killed_import_leaves_no_process_behind_and_the_store_intact(
    home: DataHome, tmp_path: Path
) -> None:
    path = _large_csv(tmp_path / "large.csv", 150_000)  # > 16 MiB: parsed in a child process
    run_indexer(home, "bank", "create", "list", check=True)
    run_indexer(home, "import", "list", str(_write(tmp_path / "one.txt", PDQ_A)), "--algorithm",
                "pdq", check=True)
    with SqliteStore(home.store_path) as store:
        before = (store.revision(), store.stats().entries)
    importer = subprocess.Popen(
        [sys.executable, "-m", "indexer", "--home", str(home.root), "import", "list", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    descendants: list[int] = []
    try:
        deadline = time.monotonic() + 120  # hang guards only: nothing here waits for a time
        while not (children := _children(importer.pid)):
            assert importer.poll() is None, "the import ended before its parser started"
            assert time.monotonic() < deadline, "no parser process appeared"
            time.sleep(0.01)
        # Freeze the importer mid-import (its parser soon blocks on the full pipe), then kill it.
        os.kill(importer.pid, signal.SIGSTOP)
        descendants = children + [c for child in children for c in _children(child)]
        os.kill(importer.pid, signal.SIGKILL)
        assert importer.wait(timeout=60) == -signal.SIGKILL
        while survivors := [pid for pid in descendants if _alive(pid)]:
            assert time.monotonic() < deadline, f"processes outlived the import: {survivors}"
            time.sleep(0.05)
    finally:
        if importer.poll() is None:
            importer.kill()
            importer.wait()
        for pid in filter(_alive, descendants):  # a failed run leaves nothing behind either
            os.kill(pid, signal.SIGKILL)
    with SqliteStore(home.store_path) as store:  # opening it recovers the killed transaction's WAL
        assert (store.revision(), store.stats().entries) == before
    db = sqlite3.connect(home.store_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_column_map_reads_an_ncmec_style_list(bank: Store, tmp_path: Path) -> None:
    """`MD5,ID` headers: the map names the hash column; ID is already our external id's alias,
    and mapping it explicitly gives the same entries; header case does not matter."""
    path = tmp_path / "ncmec.csv"
    path.write_text(f"MD5,ID,Category\n{MD5},n-1,A1\n{'0' * 31}1,n-2,B2\n")
    with pytest.raises(HashsvcError, match=r"ncmec.csv:1: the header has no 'hash' column"):
        _import(bank, path, algorithm="md5")
    report = import_file(bank, "list", path, "csv", algorithm="md5",
                         columns={"hash": "md5", "external_id": "ID"})
    assert (report.added, report.rejected) == (2, [])
    first = bank.get_entry(1)
    assert (first.hash.hex(), first.external_id, first.metadata) == (
        MD5.lower(), "n-1", {"category": "A1"})

    jsonl = tmp_path / "ncmec.jsonl"
    jsonl.write_text(f'{{"MD5": "{"1" * 32}", "Case": "c-9", "hash": "ignored"}}\n'
                     '{"Case": "c-10"}\n')
    with pytest.raises(ImportFileError) as failed:
        import_file(bank, "list", jsonl, "jsonl", algorithm="md5",
                    columns={"hash": "MD5", "external_id": "case"})
    assert [str(p) for p in failed.value.problems] == [f"{jsonl}:2: missing hash"]


@pytest.mark.parametrize(
    ("header", "columns", "message"),
    [
        ("MD5,ID", {"hash": "SHA1"}, r":1: --columns maps hash to 'SHA1', but the header has no "
                                     r"such column \(found: MD5, ID\)"),
        ("hash,MD5", {"hash": "MD5"}, r":1: --columns maps hash to 'MD5', but column 'hash' "
                                      r"also holds hash"),
    ],
)
def test_column_map_errors_name_the_file_and_the_header_line(
    bank: Store, tmp_path: Path, header: str, columns: dict[str, str], message: str
) -> None:
    path = tmp_path / "list.csv"
    path.write_text(f"{header}\n{MD5},x\n")
    with pytest.raises(HashsvcError, match=rf"list.csv{message}"):
        import_file(bank, "list", path, "csv", algorithm="md5", columns=columns)
    assert bank.stats().entries == 0


def test_import_columns_flag_and_its_usage_errors(home: DataHome, tmp_path: Path) -> None:
    """The CLI flag, a bad spec (exit 2, no traceback) and the big-file path, where a parser
    process reads the list: the map must reach it too."""
    run_indexer(home, "bank", "create", "ncmec", check=True)
    big = tmp_path / "ncmec.csv"
    with big.open("w") as handle:
        handle.write("MD5,ID\n")
        for n in range(400_000):  # ~17 MB: over the size that starts a parser process
            handle.write(f"{n:032x},case-{n}\n")
    done = run_indexer(home, "import", "ncmec", str(big), "--algorithm", "md5",
                       "--columns", "hash=MD5,external_id=ID", check=True)
    assert "added 400,000" in done.stderr
    for spec, reason in (("hash", "expected FIELD=COLUMN"), ("colour=X", "must be one of"),
                         ("hash=A,hash=B", "names 'hash' twice")):
        bad = run_indexer(home, "import", "ncmec", str(big), "--columns", spec)
        assert bad.returncode == 2 and reason in bad.stderr and "Traceback" not in bad.stderr
    wrong = run_indexer(home, "import", "ncmec", str(big), "--algorithm", "md5",
                        "--columns", "hash=Hash")
    assert wrong.returncode == 3 and f"{big}:1: --columns maps hash to 'Hash'" in wrong.stderr
