"""Parsing a large hash list in a second process, which never outlives the importer.

Why a process: parsing (csv, hex, checks) and inserting (sqlite3 binding each row) both need
the GIL, so on threads they take turns and an import costs their sum; see `indexer.importing`.
The child sends length-prefixed pickles on its stdout: batches of parsed lines, then None, or the
exception that stopped it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from hashsvc.errors import HashsvcError, LineProblem
from hashsvc.store import EntryRow
from indexer.hashlists import ColumnMap, Format, read_hash_list

_PARSER_BATCH = 10_000  # lines per message
_PARSER_AHEAD = 8  # batches the parser may run ahead of the importer
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def parse_in_child(path: Path, fmt: Format, algorithm: str | None,
                   columns: ColumnMap | None = None) -> Iterator[EntryRow | LineProblem]:
    """`read_hash_list(path, fmt, algorithm, columns)`, run in a child process: its lines as
    EntryRow tuples (they pickle ~6x faster than NewEntry) or LineProblems, or the error it raised.

    A plain child on a pipe rather than multiprocessing: a multiprocessing queue gives the child
    both ends of its pipe, so a child whose importer was killed blocked on the full queue for
    ever (~87 MB), and spawning started a resource tracker that lingered beside it. Here the
    child holds only the write end: once the importer is gone, its next write fails and it
    exits; on Linux the kernel also kills it with its parent (`_die_with_parent`).

    Call it from the thread that consumes it: Linux's parent-death signal follows the thread
    that started the child.
    """
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this code
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    parser = subprocess.Popen(
        [sys.executable, "-c", "from indexer.parser_process import main; main()",
         str(path), fmt, algorithm or "", str(os.getpid()), json.dumps(dict(columns or {}))],
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


def main() -> None:
    """The parser process: batches of parsed lines on stdout, then None; or the error that
    stopped it. Arguments: path, format, algorithm ("" for none), the importer's pid, the
    column map as JSON."""
    path, fmt, algorithm, parent, columns = sys.argv[1:6]
    _die_with_parent(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the importer's to handle
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt the stream
    with _FrameWriter(out) as writer:
        try:
            batch: list[EntryRow | LineProblem] = []
            for item in read_hash_list(Path(path), cast(Format, fmt), algorithm or None,
                                       json.loads(columns)):
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
