"""Fuzz modes without a server: the decoders, and `indexer import` into a scratch home.

Decoders: each input goes through the two ways the product decodes an upload, each in a forked
child (see forked.py): `scan` (what ScanImage does for a PDQ bank: the fast PDQ path with its
dihedral variants) and `hash` (what HashImage, `indexer hash` and ScanImage with a pHash bank or
`--no-scan-fast-pdq` do: a full decode, every algorithm, reference-exact). Only `HashsvcError`s
are expected refusals; anything else would reach a client as UNKNOWN.

Importer: each hash list is imported by the real `indexer` entry point (`indexer.cli.main`, in a
forked child so that no interpreter start is paid per file; an exception escaping it is printed
as the interpreter would, so a traceback is seen as one). Around each import the store's entry
count is read: a refused file must add nothing, an accepted one exactly what it reports, and the
store must pass `PRAGMA integrity_check` at the end.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashsvc.errors import ErrorCode, HashsvcError
from hashsvc.hashing.algorithms import ALGORITHMS
from hashsvc.hashing.imaging import Upload
from hashsvc.scanner import Scanner
from indexer.cli import main as indexer_main
from loadtests.fuzz import outcomes
from loadtests.fuzz.forked import ChildRun, run_forked
from loadtests.fuzz.hashlines import BANK, HashList
from loadtests.fuzz.images import FuzzImage
from loadtests.fuzz.outcomes import Result, Tally

DECODE_PATHS = ("scan", "hash")
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Guard:
    """Per-input bounds: a hang guard, the memory an input may take, and a hard cap (past it an
    allocation fails inside the child, so a bomb cannot take the machine down)."""

    hang_seconds: float = 60.0
    memory_budget_mb: float = 1024.0
    memory_cap_mb: float = 3072.0


def _where(tb: str) -> str:
    frames = re.findall(r'File "([^"]+)", line (\d+)', tb)
    if not frames:
        return ""
    path, line = frames[-1]
    return f" at {Path(path).name}:{line}"


def classify(name: str, path: str, run: ChildRun, guard: Guard) -> Result:
    """A child's outcome; a result within the rules but over the memory budget is `memory`."""
    result = Result(name, path, outcomes.OK, seconds=run.seconds, cpu_seconds=run.cpu_seconds,
                    peak_mb=run.peak_mb)
    value = run.value
    if run.timed_out:
        result.outcome, result.message = outcomes.HANG, f"no answer in {guard.hang_seconds:g} s"
    elif run.crashed or not value:
        result.outcome, result.kind = outcomes.CRASH, f"signal {run.signal}"
        result.message = f"the child died (signal {run.signal}) without an answer"
    elif value.get("exception") == "MemoryError":
        result.outcome, result.kind = outcomes.MEMORY, "MemoryError"
        result.message = f"hit the {guard.memory_cap_mb:g} MB cap{_where(value['traceback'])}"
    elif "exception" in value:
        result.outcome, result.kind = outcomes.TRACEBACK, value["exception"]
        result.message = (f"{value['exception']}: {outcomes.short(value['message'])}"
                          f"{_where(value['traceback'])}")
    elif "outcome" in value:
        result.outcome = value["outcome"]
        result.kind, result.message = value.get("kind", ""), value.get("message", "")
    if result.outcome in outcomes.ACCEPTABLE and run.peak_mb > guard.memory_budget_mb:
        result.outcome, result.kind = outcomes.MEMORY, "over budget"
        result.message = (f"peak {run.peak_mb:.0f} MB over the {guard.memory_budget_mb:g} MB "
                          f"budget ({result.message or 'accepted'})")
    return result


def refusal(err: HashsvcError) -> dict[str, Any]:
    outcome = {ErrorCode.INVALID_ARGUMENT: outcomes.INVALID_ARGUMENT,
               ErrorCode.RESOURCE_EXHAUSTED: outcomes.RESOURCE_EXHAUSTED}.get(err.code,
                                                                              outcomes.UNKNOWN)
    return {"outcome": outcome, "kind": err.reason, "message": outcomes.short(err.message)}


def decode_work(scanner: Scanner, data: bytes, path: str) -> dict[str, Any]:
    warnings.simplefilter("ignore")  # Pillow warns about odd files; the outcome is what counts
    upload = Upload(data)
    try:
        if path == "scan":
            scanner.hash_upload(upload, ["pdq"], dihedral=True)
        else:
            scanner.hash_upload(upload, list(ALGORITHMS), exact=True)
    except HashsvcError as err:
        return refusal(err)
    return {"outcome": outcomes.OK}


def run_decoders(inputs: Iterable[FuzzImage], tally: Tally, guard: Guard,
                 progress: Progress | None = None) -> None:
    scanner = Scanner(fast_pdq=True)
    for count, item in enumerate(inputs, 1):
        for path in DECODE_PATHS:
            run = run_forked(functools.partial(decode_work, scanner, item.data, path),
                             timeout=guard.hang_seconds, memory_cap_mb=guard.memory_cap_mb,
                             quiet=True)
            tally.add(classify(item.name, path, run, guard), must_refuse=path in item.refuse)
        if progress is not None:
            progress(count)


# ---- the importer ------------------------------------------------------------------------------


def cli_work(argv: list[str], output: Path) -> dict[str, Any]:
    """`indexer ARGV` as the console script runs it, its output (stdout and stderr) in `output`."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        code: Any = indexer_main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return {"exit": code}


def run_cli(home: Path, argv: list[str], guard: Guard) -> tuple[ChildRun, str]:
    with tempfile.NamedTemporaryFile(prefix="fuzz-cli-", suffix=".txt") as output:
        run = run_forked(lambda: cli_work(["--home", str(home), *argv], Path(output.name)),
                         timeout=guard.hang_seconds, memory_cap_mb=guard.memory_cap_mb)
        text = Path(output.name).read_text(errors="replace")
    return run, text


def entry_count(home: Path) -> int:
    db = sqlite3.connect(home / "store.sqlite")
    try:
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
    finally:
        db.close()


def integrity(home: Path) -> str:
    db = sqlite3.connect(home / "store.sqlite")
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def new_home(root: Path, guard: Guard) -> Path:
    """A scratch data home holding the empty bank every list is imported into."""
    home = root / "home"
    run, text = run_cli(home, ["bank", "create", BANK], guard)
    if run.value.get("exit") != 0:
        raise RuntimeError(f"cannot create the fuzz bank: {text}")
    return home


_ADDED = re.compile(r"\badded ([\d,]+)")


def import_one(home: Path, item: HashList, directory: Path, guard: Guard) -> Result:
    path = directory / item.filename
    path.write_bytes(item.content)
    before = entry_count(home)
    argv = ["import", BANK, str(path), *(["--algorithm", item.algorithm] if item.algorithm
                                         else [])]
    run, text = run_cli(home, argv, guard)
    path.unlink()
    delta = entry_count(home) - before
    result = classify(item.name, "import", run, guard)
    code = run.value.get("exit")
    added = _ADDED.search(text)
    if result.outcome == outcomes.OK:
        if "Traceback (most recent call last)" in text or code == 1:
            result.outcome, result.kind = outcomes.TRACEBACK, _exception_name(text)
            result.message = _exception_line(text) + _where(text)
        elif code != 0 and not re.search(re.escape(path.name) + r":\d+", text):
            result.outcome, result.kind = outcomes.UNLOCATED, outcomes.message_kind(text)
            result.message = f"exit {code}, no file:line in: {outcomes.short(text)}"
        elif code != 0:
            result.outcome = outcomes.INVALID_ARGUMENT
            result.kind = outcomes.message_kind(text)
            result.message = outcomes.short(text)
    # A refused file must add nothing; an accepted one what it says it added (if it says).
    reported = (int(added.group(1).replace(",", "")) if added else delta) if code == 0 else 0
    if delta != reported:
        result.outcome, result.kind = outcomes.PARTIAL, f"{delta} stored, {reported} reported"
        result.message = (f"exit {code}: the store changed by {delta} entries; "
                          f"the import reported {reported}: {outcomes.short(text)}")
    return result


def _exception_name(text: str) -> str:
    found = re.findall(r"^(\w+(?:Error|Exception)):", text, re.MULTILINE)
    return found[-1] if found else "exit 1"


def _exception_line(text: str) -> str:
    found = re.findall(r"^\w+(?:Error|Exception):.*$", text, re.MULTILINE)
    return outcomes.short(found[-1] if found else text[-300:])


def run_importer(lists: Iterable[HashList], tally: Tally, guard: Guard, root: Path,
                 progress: Progress | None = None) -> list[HashList]:
    """Import each list into one scratch home; returns the lists that were stored."""
    home = new_home(root, guard)
    stored = []
    for count, item in enumerate(lists, 1):
        result = import_one(home, item, root, guard)
        tally.add(result)
        if result.outcome == outcomes.OK:
            stored.append(item)
        if progress is not None:
            progress(count)
    check = integrity(home)
    if check != "ok":
        tally.add(Result("store.sqlite", "integrity_check", outcomes.PARTIAL, "corrupt", check))
    return stored
