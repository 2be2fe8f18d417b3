"""Shared fixtures: the read-only test data in ../shared/data and fresh data homes."""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from hashsvc.home import DataHome
from hashsvc.store import SqliteStore, Store, open_store
from tests.postgres_server import ENV_SKIP, PostgresServer, find_binaries, running_postgres
from tests.s3_server import aws_credentials, moto_server

DATA = Path(
    os.environ.get("HASHSVC_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
REFERENCE = DATA / "pdq-reference"
IMAGES = REFERENCE / "images"
PHOTOS = DATA / "photos-cc0" / "images"
BRIDGE_ORIGINAL = IMAGES / "bridge-mods" / "aaa-orig.jpg"

if not REFERENCE.is_dir():  # fail loudly: a suite that silently skips its data proves nothing
    raise RuntimeError(f"test data not found at {DATA}; set HASHSVC_SHARED_DATA")


@dataclass(frozen=True)
class GoldenRow:
    path: Path
    pdq_hex: str
    quality: int | None
    max_distance: int


def golden_rows() -> list[GoldenRow]:
    with (REFERENCE / "expected.csv").open() as handle:
        return [
            GoldenRow(REFERENCE / row["path"], row["pdq_hex"],
                      int(row["quality"]) if row["quality"] else None, int(row["max_distance"]))
            for row in csv.DictReader(handle)
        ]


def hamming(a: bytes, b: bytes) -> int:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def encode_image(image: Image.Image, fmt: str, **params: object) -> bytes:
    """`image` saved as `fmt` in memory: test uploads are made, never written to disk."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width×height with almost no data: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def home(tmp_path: Path) -> DataHome:
    return DataHome(tmp_path / "home")


@pytest.fixture
def store(home: DataHome) -> Iterator[Store]:
    with SqliteStore(home.store_path) as opened:
        yield opened


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (see tests/postgres_server.py).

    Missing binaries fail the tests that need them (CI installs Debian's `postgresql`), unless
    the environment says to skip them: a suite that silently skips a backend proves nothing."""
    bin_dir = find_binaries()
    if bin_dir is None:
        message = "PostgreSQL not found in /usr/lib/postgresql/*/bin: apt-get install postgresql"
        if os.environ.get(ENV_SKIP) == "1":
            pytest.skip(f"{message} ({ENV_SKIP}=1)")
        pytest.fail(f"{message}, or set {ENV_SKIP}=1 to skip these tests", pytrace=False)
    with running_postgres(bin_dir) as server:
        yield server


@pytest.fixture(scope="module")
def aws_environment() -> Iterator[None]:
    """Throwaway S3 credentials in the environment for a module (tests/s3_server.py)."""
    with aws_credentials():
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_environment: None) -> Iterator[str]:
    """An S3-compatible server on 127.0.0.1 for a module (moto; tests/s3_server.py)."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, home: DataHome) -> Iterator[Store]:
    """The same tests against every store backend, each in a fresh, empty store."""
    if request.param == "sqlite":
        target = str(home.store_path)
    else:
        target = request.getfixturevalue("postgres").new_database()
    with open_store(target) as opened:
        yield opened


def scan_until(client: Any, image: bytes, *, matched: bool, polls: int = 600) -> Any:
    """Scan until the result's `matched` is as wanted: a bounded number of calls (the sleep only
    spaces them out), since servers apply store changes on their next reload tick."""
    for _ in range(polls):
        result = client.scan_image(image)
        if result.matched == matched:
            return result
        time.sleep(0.05)
    raise AssertionError(f"still matched={not matched} after {polls} scans")


def run_indexer(
    home: DataHome, *args: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a child process, as a person or a script would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "indexer", "--home", str(home.root), *args],
        capture_output=True, text=True, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"indexer {args} exited {result.returncode}:\n{result.stderr}")
    return result
