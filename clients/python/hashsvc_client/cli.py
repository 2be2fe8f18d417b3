"""`hashscan`: scan image files and folders against a hashsvc server.

Files go over one ScanImages stream (the server scans them in parallel, with flow control), or,
with --hash-only, are hashed here over all cores and only their hashes are sent.

Each file goes to the server under an opaque id, the first 16 hex digits of the SHA-256 of its
path, so local paths never reach the server's logs or audit trail; the output names the file.

Output: one JSON object per file on stdout. Exit status (for scripts):
    0  nothing matched     1  something matched     2  usage error
    3  some files could not be scanned (the others were)     4  the service failed the run
  141  the reader of the output went away (e.g. `| head`)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from tqdm import tqdm

from hashsvc_client import _channel
from hashsvc_client._console import console_main
from hashsvc_client.client import Client, ScanItem
from hashsvc_client.errors import HashsvcClientError
from hashsvc_client.hashing import LocalHashError, hash_file

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
EXIT_MATCHED, EXIT_FILE_ERRORS, EXIT_SERVICE = 1, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hashscan", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1] + "\nexample:\n  hashscan --hash-only ./uploads/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--server", help="host:port; several servers as IP:PORT,IP:PORT or "
                        f"dns:///NAME:PORT, balanced per call (default ${_channel.ENV_SERVER} "
                        f"or {_channel.DEFAULT_SERVER})")
    parser.add_argument("--api-key", help=f"default ${_channel.ENV_API_KEY}")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-cert", type=Path, help="PEM CA to trust (implies --tls)")
    parser.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--client-key", type=Path, help="PEM client key (mutual TLS)")
    parser.add_argument("--hash-only", action="store_true",
                        help="hash locally and send only hashes (needs hashsvc-client[hashing])")
    parser.add_argument("--algorithms", default="pdq,md5",
                        help="with --hash-only: pdq, md5, sha256 (default pdq,md5)")
    parser.add_argument("--bank", action="append", dest="banks", default=[],
                        help="only these banks (repeatable)")
    parser.add_argument("--no-dihedral", dest="dihedral", action="store_false",
                        help="do not match rotated or mirrored copies (with --hash-only: do not "
                        "hash them either)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="local hashing processes with --hash-only (default: cores)")
    parser.add_argument("--no-recursive", dest="recursive", action="store_false")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline for the whole run, seconds (default none)")
    return parser


def find_files(paths: Sequence[Path], recursive: bool) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.glob("*")
            found.extend(sorted(p for p in candidates if p.is_file()
                                and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def _hash_job(job: tuple[Path, tuple[str, ...], bool]) -> tuple[str, list[bytes] | str]:
    path, algorithms, dihedral = job
    try:
        return str(path), [h.SerializeToString()
                           for h in hash_file(path, algorithms, dihedral=dihedral)]
    except (LocalHashError, OSError) as err:
        return str(path), str(err)


@console_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        target, api_key = _channel.resolve(args.server, args.api_key)
    except ValueError as err:
        print(f"hashscan: error: --server: {err}", file=sys.stderr)
        return 2
    files = find_files(args.paths, args.recursive)
    tls = (_channel.Tls(args.ca_cert, args.client_cert, args.client_key)
           if args.tls or args.ca_cert or args.client_cert else None)
    failures: list[dict[str, Any]] = []
    sent: deque[str] = deque()  # paths of the items sent, in order: answers come in that order
    items = (_hashed_items(files, args, failures, sent) if args.hash_only
             else _image_items(files, failures, sent))
    matched = errors = 0
    bar = tqdm(total=len(files), unit=" files", disable=not sys.stderr.isatty(), leave=False)
    try:
        with Client(target, api_key=api_key, tls=tls) as client:
            for response in client.scan_images(items, banks=args.banks, dihedral=args.dihedral,
                                               timeout=args.timeout):
                for failure in _drain(failures):
                    errors += 1
                    _emit(failure)
                bar.update()
                path = sent.popleft()
                if response.HasField("error"):
                    errors += 1
                    _emit({"file": path, "error": response.error.message,
                           "reason": response.error.reason})
                    continue
                matched += response.result.matched
                result = json_format.MessageToDict(
                    response.result, preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True)
                result.pop("request_id", None)  # the opaque id; the file is named instead
                _emit({"file": path, **result})
    except HashsvcClientError as err:
        print(f"hashscan: error: {err}", file=sys.stderr)
        return EXIT_SERVICE
    finally:
        bar.close()
    for failure in _drain(failures):
        errors += 1
        _emit(failure)
    if errors:
        return EXIT_FILE_ERRORS
    return EXIT_MATCHED if matched else 0


def item_id(path: str) -> str:
    """What the server sees of a file: a hash of its path, never the path itself."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _image_items(
    files: list[Path], failures: list[dict[str, Any]], sent: deque[str]
) -> Iterator[ScanItem]:
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as err:
            failures.append({"file": str(path), "error": f"cannot read: {err.strerror}",
                             "reason": "unreadable"})
            continue
        sent.append(str(path))
        yield item_id(str(path)), data


def _hashed_items(
    files: list[Path], args: argparse.Namespace, failures: list[dict[str, Any]], sent: deque[str]
) -> Iterator[ScanItem]:
    from hashsvc_client.v1 import types_pb2

    algorithms = tuple(a.strip() for a in args.algorithms.split(",") if a.strip())
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=max(1, args.workers), mp_context=context) as pool:
        jobs = [(p, algorithms, args.dihedral) for p in files]
        for name, outcome in pool.map(_hash_job, jobs, chunksize=4):
            if isinstance(outcome, str):
                failures.append({"file": name, "error": outcome, "reason": "local_hashing"})
                continue
            sent.append(name)
            yield item_id(name), [types_pb2.Hash.FromString(raw) for raw in outcome]


def _drain(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    drained = list(failures)
    failures.clear()
    return drained


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
