"""Importing a hash list into a bank: one file, one transaction.

A file either lands whole or not at all (unless `skip_invalid`), which is what a trust-and-safety
team needs when a list of millions has one corrupt line: an error naming the line, and a store
exactly as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from tqdm import tqdm

from hashsvc.errors import HashsvcError, ImportFileError, LineProblem
from hashsvc.store import BulkAdder, EntryRow, Store
from indexer.hashlists import Format, read_hash_list

_BATCH = 50_000
_PARSER_MIN_BYTES = 16 << 20  # ~200k CSV lines: below, starting a parser process costs more
_PARSER_BATCH = 10_000  # lines per message from the parser process
_PARSER_AHEAD = 8  # batches the parser may run ahead of the importer
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class _Inserter:
    """Inserts batches on a second thread while the caller parses the next one.

    sqlite3 releases the GIL while SQLite works, so parsing and inserting overlap: an import
    costs about the larger of the two instead of their sum. Still one transaction (the caller's
    `bulk_add`), at most two batches in memory, and an insert error is re-raised in the caller.
    """

    def __init__(self, adder: BulkAdder) -> None:
        self._adder = adder
        self._queue: queue.Queue[list[EntryRow] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="import-inserter", daemon=True)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._adder.add(batch)
                except BaseException as err:  # handed to the caller in put() / __exit__
                    self._error = err

    def put(self, batch: list[EntryRow]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(batch)

    def __enter__(self) -> _Inserter:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and kind is None:
            raise self._error


def _parsed(path: Path, fmt: Format, algorithm: str | None) -> Iterator[EntryRow | LineProblem]:
    """The file's lines, parsed: in a second process for a large file, else here.

    Why a process: parsing (csv, hex, checks) and inserting (sqlite3 binding each row) both need
    the GIL, so on threads they take turns and an import costs their sum. A parser process runs
    beside the insert; its entries cross the pipe as plain tuples (pickled ~6x faster than the
    NewEntry named tuples they were). Measured on 1M lines: see the README's import row.
    """
    here = read_hash_list(path, fmt, algorithm)  # checks the file and the format, at once
    return here if path.stat().st_size < _PARSER_MIN_BYTES else _parse_elsewhere(path, fmt,
                                                                                 algorithm)


def _parse_elsewhere(path: Path, fmt: Format, algorithm: str | None
                     ) -> Iterator[EntryRow | LineProblem]:
    """Run `_parser_main` in a child process and yield what it sends.

    A plain child on a pipe rather than multiprocessing: a multiprocessing queue gives the child
    both ends of its pipe, so a child whose importer was killed blocked on the full queue for
    ever (~87 MB), and spawning started a resource tracker that lingered beside it. Here the
    child holds only the write end: once the importer is gone, its next write fails and it
    exits; on Linux the kernel also kills it with its parent (`_die_with_parent`).
    """
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this code
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    parser = subprocess.Popen(
        [sys.executable, "-c", "from indexer.importing import _parser_main; _parser_main()",
         str(path), fmt, algorithm or "", str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
    )
    assert parser.stdout is not None
    try:
        while (message := _receive(parser.stdout)) is not None:
            if isinstance(message, BaseException):
                raise message
            yield from message
    except EOFError:
        raise HashsvcError(f"{path}: the parser process died (exit code {parser.wait()}); "
                           "nothing from this file was stored") from None
    finally:
        if parser.poll() is None:  # stopped early: an error, or the consumer gave up
            parser.kill()
        parser.stdout.close()
        parser.wait()


def _receive(stream: IO[bytes]) -> Any:
    """One message of `_FrameWriter`'s: an 8-byte length, then the pickle; EOFError if the
    parser ended (or was killed) before sending it whole."""
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    size = int.from_bytes(header, "little")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError
    return pickle.loads(body)


def _parser_main() -> None:
    """The parser process: batches of parsed lines on stdout, then None; or the error that
    stopped it. Arguments: path, format, algorithm ("" for none), the importer's pid."""
    path, fmt, algorithm, parent = sys.argv[1:5]
    _die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importer's to handle
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt the stream
    with _FrameWriter(out) as writer:
        try:
            batch: list[EntryRow | LineProblem] = []
            for item in read_hash_list(Path(path), cast(Format, fmt), algorithm or None):
                batch.append(item if isinstance(item, LineProblem) else (
                    item.algorithm, item.hash, item.external_id, item.metadata, item.variant))
                if len(batch) >= _PARSER_BATCH:
                    writer.send(batch)
                    batch = []
            writer.send(batch)
            writer.send(None)
        except Exception as err:  # handed to the importer, which raises it
            writer.send(_picklable(err))


class _FrameWriter:
    """Writes the parser's messages to the importer on a second thread, so that parsing goes on
    (up to `_PARSER_AHEAD` batches) while a write waits for the importer to read."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_PARSER_AHEAD)
        self._thread = threading.Thread(target=self._run, name="parser-writer", daemon=True)

    def send(self, message: object) -> None:
        body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._queue.put(len(body).to_bytes(8, "little") + body)

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            view = memoryview(frame)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except BrokenPipeError:  # the importer is gone: nobody to tell
                os._exit(1)

    def __enter__(self) -> _FrameWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        os.close(self._fd)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the importer dies, however it dies; elsewhere the
    closed pipe stops it at its next write."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the importer died before the request took effect
        os._exit(1)


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.dumps(err)
    except Exception:
        return HashsvcError(f"the parser process failed: {err!r}")
    return err


def _estimate_lines(path: Path, sample: int = 1 << 16) -> int:
    """About how many lines `path` holds, from its size and its first `sample` bytes: enough
    for the store to choose how to maintain its indexes (see `BulkAdder`)."""
    with path.open("rb") as handle:
        head = handle.read(sample)
    return path.stat().st_size * head.count(b"\n") // max(len(head), 1)


@dataclass
class ImportReport:
    path: Path
    added: int = 0
    duplicates: int = 0
    rejected: list[LineProblem] = field(default_factory=list)


def import_file(
    store: Store,
    bank: str,
    path: Path,
    fmt: Format,
    *,
    algorithm: str | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
) -> ImportReport:
    """Import `path` into `bank` in one transaction; raise `ImportFileError` on a bad line
    (after reading the whole file, so the error lists every bad line) unless `skip_invalid`."""
    report = ImportReport(path)
    items = _parsed(path, fmt, algorithm)
    with (
        store.bulk_add(bank, expected=_estimate_lines(path)) as adder,
        _Inserter(adder) as inserter,
        tqdm(desc=path.name, unit=" lines", disable=not progress, leave=False) as bar,
    ):
        batch: list[EntryRow] = []
        for item in items:
            bar.update()
            if isinstance(item, LineProblem):
                report.rejected.append(item)
                continue
            if report.rejected and not skip_invalid:
                continue  # the file will be rolled back; keep reading only to list problems
            batch.append(item)
            if len(batch) >= _BATCH:
                inserter.put(batch)
                batch = []
        if report.rejected and not skip_invalid:
            raise ImportFileError(str(path), report.rejected)
        inserter.put(batch)
    report.added = adder.result.added
    report.duplicates = adder.result.duplicates
    return report
