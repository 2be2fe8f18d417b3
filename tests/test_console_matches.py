"""The console's Matches page in headless Chromium against the real server: a match made by a
real scan (the client, over gRPC, of a real photo) appears; "Confirm" records a verdict; "False
positive" with a reason disables the entry, and the same scan stops matching; a verdict posted
without its CSRF token, or a false positive without a reason, is refused and changes nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from hashsvc_client import Client
from hashsvc_client.v1 import admin_pb2
from selenium import webdriver
from selenium.webdriver.common.by import By

from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, open_store
from tests.browser import chromium, screenshot
from tests.conftest import PHOTOS, scan_until
from tests.console_client import ConsoleClient
from tests.ops_console import sign_in
from tests.server_process import ServerProcess
from tests.test_console_pages import _accessible as accessible
from tests.test_console_pages import _navigate as navigate

LISTED, OTHER = (p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))[10:12])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("console-matches")
    with open_store(home / "store.sqlite") as store:
        store.create_bank("known")
        store.add_entries("known", [
            NewEntry("sha256", hashlib.sha256(LISTED).digest(), "case-41"),
            NewEntry("sha256", hashlib.sha256(OTHER).digest(), "case-42")])
        publish(store, home / "snapshots")
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def browser(server: ServerProcess) -> Iterator[webdriver.Chrome]:
    with chromium() as driver:
        sign_in(driver, server)
        assert driver.current_url.endswith("/console/banks")
        yield driver


def _base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _row(browser: webdriver.Chrome, request_id: str) -> webdriver.remote.webelement.WebElement:
    return browser.find_element(By.CSS_SELECTOR, f'tr.match[data-request="{request_id}"]')


def _flash(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, "p.flash").text)


def test_a_false_positive_from_the_page_makes_the_same_scan_stop_matching(
    server: ServerProcess, browser: webdriver.Chrome,
) -> None:
    with Client(server.target, api_key=server.keys["scanner"]) as scanner:
        scanned = scanner.scan_image(LISTED, request_id="upload-77")
        assert scanned.matched
        (match,) = scanned.matches

        browser.get(f"{_base(server)}/console/matches")
        assert browser.title == "Matches - hashsvc console"
        row = _row(browser, "upload-77")
        assert f"known #{match.entry_id}" in row.text and "case-41" in row.text
        assert "sha256, distance 0 of 0" in row.text and "ScanImage by scanner" in row.text
        assert "matched" in row.find_element(By.CSS_SELECTOR, "td.status").text

        navigate(browser, row.find_element(By.CSS_SELECTOR, "button.secondary").click)  # Confirm
        assert _flash(browser) == (
            f"Match confirmed for entry {match.entry_id}.")
        assert "confirmed by admin" in _row(browser, "upload-77").text
        accessible(browser)  # labels, buttons, th scope, title, main
        screenshot(browser, "matches")

        form = _row(browser, "upload-77").find_element(By.CSS_SELECTOR, "form.false-positive")
        form.find_element(By.NAME, "reason").send_keys("a jacket, not the listed image")
        form.find_element(By.NAME, "case_id").send_keys("T-12")
        navigate(browser, form.find_element(By.CSS_SELECTOR, "button.danger").click)
        assert _flash(browser) == (f"False positive recorded for entry {match.entry_id}: it is now "
                         "disabled (false positive (case T-12): a jacket, not the listed "
                         "image).")
        row = _row(browser, "upload-77")
        assert "entry disabled" in row.text and "false positive by admin" in row.text
        assert not row.find_elements(By.CSS_SELECTOR, "form")  # no more verdict buttons
        accessible(browser)  # labels, buttons, th scope, title, main
        screenshot(browser, "matches-false-positive")

        assert not scan_until(scanner, LISTED, matched=False).matched  # the same scan
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        entry = admin.get_entry(match.entry_id)
    assert entry.disabled and [(f.verdict, f.upload_id, f.scanned_hash.hex)
                               for f in entry.feedback] == [
        (admin_pb2.FEEDBACK_VERDICT_CONFIRMED, "upload-77", hashlib.sha256(LISTED).hexdigest()),
        (admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE, "upload-77",
         hashlib.sha256(LISTED).hexdigest())]


def test_a_verdict_without_its_csrf_token_or_a_reason_is_refused(server: ServerProcess) -> None:
    with Client(server.target, api_key=server.keys["scanner"]) as scanner:
        scanned = scanner.scan_image(OTHER, request_id="upload-78")
    (match,) = scanned.matches
    client = ConsoleClient(_base(server))
    assert client.sign_in(server.keys["admin"]).status == 303
    verdict = {"entry_id": str(match.entry_id), "verdict": "false_positive",
               "reason": "looks benign", "upload_id": "upload-78"}
    forged = client.post("/console/matches/feedback", verdict)
    assert forged.status == 403 and b"security token is missing" in forged.body.lower()
    token = client.token("/console/matches")
    no_reason = client.post("/console/matches/feedback",
                            verdict | {"reason": " ", "csrf_token": token})
    assert no_reason.status == 422
    assert b"false positive needs a reason" in no_reason.body.lower()
    assert b"<h1>Recent matches</h1>" in no_reason.body and b"Traceback" not in no_reason.body
    unknown = client.post("/console/matches/feedback",
                          verdict | {"entry_id": "987654", "csrf_token": token})
    assert unknown.status == 404 and b"no entry with id 987654" in unknown.body.lower()
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        entry = admin.get_entry(match.entry_id)
        assert not entry.disabled and not entry.feedback  # nothing recorded
    with Client(server.target, api_key=server.keys["scanner"]) as scanner:
        assert scanner.scan_image(OTHER).matched
