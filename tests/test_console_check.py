"""The console's "Check an image" page in headless Chromium against the real server: a real
photo that is in a bank shows its hashes and its match (distance against threshold, how it
matched); a corrupt file and an oversized one get a clear message with status 422 / 413."""

from __future__ import annotations

import html
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import Upload
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.browser import chromium
from tests.conftest import PHOTOS
from tests.ops_console import base as console_base
from tests.ops_console import button, cells, page_shot, sign_in, signed_in_client, submit
from tests.server_process import ServerProcess

PHOTO = sorted(PHOTOS.iterdir())[0]
MAX_IMAGE_BYTES = 4_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("console-check")
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("known-photos")
        pdq = PDQ.compute(Upload(PHOTO.read_bytes())).value
        store.add_entries("known-photos", [NewEntry("pdq", pdq, "photo-1")])
        publish(store, home / "snapshots")
    with ServerProcess(home, "--max-image-bytes", str(MAX_IMAGE_BYTES)) as process:
        yield process


@pytest.fixture(scope="module")
def driver(server: ServerProcess) -> Iterator[WebDriver]:
    with chromium(height=1300) as browser:
        sign_in(browser, server)
        yield browser


def _check(driver: WebDriver, server: ServerProcess, path: Path) -> None:
    driver.get(console_base(server) + "/console/check")
    driver.find_element(By.ID, "image").send_keys(str(path))
    submit(driver, button(driver, "Check"))


def test_a_photo_in_a_bank_shows_its_hashes_and_how_it_matched(
        server: ServerProcess, driver: WebDriver, tmp_path: Path) -> None:
    _check(driver, server, PHOTO)
    assert driver.find_element(By.ID, "verdict").text == "Matched"
    hashes = {row[0]: row[1] for row in cells(driver, "hashes")}
    assert {"pdq", "md5", "sha256"} <= set(hashes) and len(hashes["pdq"]) == 64
    (match,) = cells(driver, "matches")
    outcome, bank, entry, algorithm, distance, how, _probability = match
    assert (outcome, bank, algorithm, how) == ("match", "known-photos", "pdq", "as uploaded")
    assert "photo-1" in entry
    found, threshold = (int(part) for part in distance.split(" / "))
    assert found <= threshold == 31
    page_shot(driver, "check-an-image")
    rotated = tmp_path / "rotated.jpg"
    with Image.open(PHOTO) as photo:
        photo.convert("RGB").rotate(90, expand=True).save(rotated, "JPEG", quality=92)
    _check(driver, server, rotated)
    (match,) = cells(driver, "matches")
    # turned 90° counter-clockwise: the upload matches once turned 270° more
    assert match[0] == "match" and match[5] == "rotated 270° counter-clockwise to match"


def test_a_corrupt_file_shows_why_it_was_refused(server: ServerProcess, driver: WebDriver,
                                                 tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(PHOTO.read_bytes()[:300])  # a JPEG cut off in its header
    _check(driver, server, corrupt)
    error = driver.find_element(By.CSS_SELECTOR, "p.flash-error").text
    assert error.startswith("The file corrupt.jpg could not be checked: image: ")
    assert not driver.find_elements(By.ID, "hashes")
    page_shot(driver, "check-an-image-corrupt")
    client = signed_in_client(server)
    token = client.token("/console/check")
    answer = client.post_multipart("/console/check", {"csrf_token": token},
                                   {"image": ("corrupt.jpg", corrupt.read_bytes())})
    assert answer.status == 422 and "Traceback" not in answer.body.decode()


def test_an_oversized_upload_is_413_and_an_empty_one_422(server: ServerProcess) -> None:
    client = signed_in_client(server)
    token = client.token("/console/check")
    big = io.BytesIO()
    big.write(PHOTO.read_bytes())
    big.write(b"\0" * (MAX_IMAGE_BYTES + 1 - big.tell()))
    answer = client.post_multipart("/console/check", {"csrf_token": token},
                                   {"image": ("big.jpg", big.getvalue())})
    assert answer.status == 413
    assert (f"over this server's limit of {MAX_IMAGE_BYTES:,} bytes"
            in html.unescape(answer.body.decode()))
    empty = client.post_multipart("/console/check", {"csrf_token": token},
                                  {"image": ("empty.jpg", b"")})
    assert empty.status == 422 and "Choose an image file" in empty.body.decode()


def test_the_upload_is_neither_stored_nor_logged(server: ServerProcess) -> None:
    """After a check, no file in the server's home holds the image's bytes, and the server's
    log does not name the file (the audit log holds its hashes, as for every scan)."""
    client = signed_in_client(server)
    token = client.token("/console/check")
    image = PHOTO.read_bytes()
    answer = client.post_multipart("/console/check", {"csrf_token": token},
                                   {"image": ("private-upload-name.jpg", image)})
    assert answer.status == 200 and b"private-upload-name.jpg" in answer.body
    sample = image[len(image) // 2:len(image) // 2 + 64]  # entropy-coded data: unique
    for path in server.home.rglob("*"):
        if path.is_file():
            assert sample not in path.read_bytes(), f"{path} holds the uploaded image"
    assert "private-upload-name" not in server.log


def test_a_server_that_does_not_scan_says_so(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "home", "--role", "admin") as admin_only:
        client = signed_in_client(admin_only)
        answer = client.post_multipart("/console/check",
                                       {"csrf_token": client.token("/console/check")},
                                       {"image": ("photo.jpg", PHOTO.read_bytes())})
    assert answer.status == 501
    assert "This server does not scan (it runs --role admin)" in answer.body.decode()
