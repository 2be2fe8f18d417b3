"""The issue's analyst session end to end, in headless Chromium against one real server, through
the console's pages only: a wrong key is refused; sign in; create a bank; import a hash list
holding the PDQ of a real photo; look its entry up; a real scan of that photo with the Python
client matches; mark the match a false positive on the Matches page and the same scan stops
matching; a form posted without its CSRF token is refused; publish on the Snapshot page and see
the served version change; sign out, after which the old cookie opens no page.

The other console tests check each page in detail; this one checks that the pages, one after
the other, do the job together. Each step is checked against the server with the gRPC client,
and saved as a screenshot (test-artifacts/console/flow-*.png)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashsvc_client import Client
from hashsvc_client.v1 import admin_pb2
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By

from hashsvc.home import DataHome
from tests.browser import chromium
from tests.conftest import PHOTOS, run_indexer, scan_until
from tests.ops_console import base, button, cells, page_shot, submit
from tests.server_process import ServerProcess
from tests.test_console_pages import _messages as messages
from tests.test_console_pages import _navigate as navigate
from tests.test_console_pages import _sign_in as sign_in

BANK = "flow-bank"
LISTED, *OTHERS = sorted(PHOTOS.glob("*.jpg"))[20:24]
COOKIE = "hashsvc_console"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("console-flow")) as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


@pytest.fixture(scope="module")
def scanner(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    with chromium() as driver:
        yield driver


def _status(driver: Chrome) -> int:
    """The HTTP status of the page the browser shows (Navigation Timing's responseStatus)."""
    return int(driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus"))


def _hash_list(server: ServerProcess, path: Path) -> Path:
    """A hash list as an analyst gets one: the PDQ of LISTED among those of other photos,
    hashed with `indexer hash` (the walk-through's way)."""
    hashed = run_indexer(DataHome(server.home), "hash", "--algorithms", "pdq",
                         str(LISTED), *map(str, OTHERS), check=True)
    by_file = {row["file"]: row["pdq"] for row in map(json.loads, hashed.stdout.splitlines())}
    names = {str(LISTED): "case-listed"} | {str(p): f"case-other-{n}" for n, p in
                                             enumerate(OTHERS)}
    path.write_text("hash,algorithm,external_id\n" + "".join(
        f"{by_file[file]},pdq,{name}\n" for file, name in names.items()))
    return path


def test_an_analysts_session_from_sign_in_to_sign_out(
        server: ServerProcess, browser: Chrome, admin: Client, scanner: Client,
        tmp_path: Path) -> None:
    photo = LISTED.read_bytes()

    # A wrong key is refused: the sign-in page again, 401, and no session cookie.
    sign_in(browser, server, "hs_not_a_key_of_this_server")
    assert "This key is not known to the server." in messages(browser)
    assert _status(browser) == 401 and browser.get_cookie(COOKIE) is None
    page_shot(browser, "flow-01-wrong-key")

    sign_in(browser, server, server.keys["admin"])
    assert browser.current_url.endswith("/console/banks") and "Signed in." in messages(browser)
    page_shot(browser, "flow-02-signed-in")

    # Create a bank.
    browser.find_element(By.ID, "name").send_keys(BANK)
    browser.find_element(By.ID, "description").send_keys("the end-to-end flow's list")
    submit(browser, button(browser, "Create bank"))
    assert f"Bank {BANK} created." in messages(browser)
    assert BANK in [b.name for b in admin.list_banks()]
    page_shot(browser, "flow-03-bank-created")

    # Import a list (the form is on the bank's page, where creating it led).
    assert browser.current_url.endswith(f"/console/banks/{BANK}")
    listed = _hash_list(server, tmp_path / "received.csv")
    browser.find_element(By.ID, "list").send_keys(str(listed))
    submit(browser, button(browser, "Import"))
    assert f"Imported received.csv into {BANK}: 4 added, 0 already there." in messages(browser)
    page_shot(browser, "flow-04-list-imported")

    # Look up the photo's entry by its external id, and open it.
    browser.get(base(server) + "/console/entries")
    browser.find_element(By.ID, "q").send_keys("case-listed")
    submit(browser, button(browser, "Search"))
    (row,) = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert "case-listed" in row.text and BANK in row.text
    navigate(browser, row.find_element(By.TAG_NAME, "a").click)
    found = re.search(r"/console/entries/(\d+)$", browser.current_url)
    assert found, browser.current_url
    entry_id = int(found.group(1))
    assert listed.read_text().splitlines()[1].split(",")[0] in \
        browser.find_element(By.TAG_NAME, "main").text  # the PDQ hash, as imported
    page_shot(browser, "flow-05-entry")

    # A real scan of that photo matches that entry (the import is live within a reload tick).
    result = scan_until(scanner, photo, matched=True)
    assert [(m.entry_id, m.bank, m.external_id) for m in result.matches] == [
        (entry_id, BANK, "case-listed")]

    # On the Matches page, mark it a false positive: the same scan no longer matches.
    browser.get(base(server) + "/console/matches")
    match_row = browser.find_element(By.CSS_SELECTOR, f'tr.match[data-entry="{entry_id}"]')
    assert "case-listed" in match_row.text and "ScanImage by scanner" in match_row.text
    page_shot(browser, "flow-06-matches")
    form = match_row.find_element(By.CSS_SELECTOR, "form.false-positive")
    form.find_element(By.NAME, "reason").send_keys("a different street scene")
    submit(browser, form.find_element(By.CSS_SELECTOR, "button.danger"))
    assert messages(browser) == [
        f"False positive recorded for entry {entry_id}: it is now disabled "
        "(false positive: a different street scene)."]
    page_shot(browser, "flow-07-false-positive")
    assert not scan_until(scanner, photo, matched=False).matched
    entry = admin.get_entry(entry_id)
    assert entry.disabled and [f.verdict for f in entry.feedback] == [
        admin_pb2.FEEDBACK_VERDICT_FALSE_POSITIVE]

    # A form posted without its CSRF token is refused, and creates nothing.
    browser.get(base(server) + "/console/banks")
    browser.execute_script(
        "document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    browser.find_element(By.ID, "name").send_keys("forged")
    submit(browser, button(browser, "Create bank"))
    assert _status(browser) == 403
    assert "security token is missing" in browser.find_element(By.TAG_NAME, "main").text
    assert "forged" not in [b.name for b in admin.list_banks()]
    page_shot(browser, "flow-08-no-csrf-token")

    # Publish on the Snapshot page: the version this server serves changes to the new one.
    browser.get(base(server) + "/console/snapshot")
    (this,) = cells(browser, "replicas")
    before, pending = this[2], int(this[5])
    assert "(this server)" in this[0] and pending > 0  # the bank, its list, the verdict
    page_shot(browser, "flow-09-snapshot")
    submit(browser, button(browser, "Publish snapshot"))
    (flash,) = messages(browser)
    (this,) = cells(browser, "replicas")
    assert flash.startswith(f"Published snapshot {this[2]}:")
    assert this[2] != before and this[5] == "0" and this[6] == "current"
    assert admin.index_status().version == this[2]
    page_shot(browser, "flow-10-published")

    # Sign out; the old cookie, put back into the browser, opens no page any more.
    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None
    submit(browser, button(browser, "Sign out"))
    assert browser.current_url.endswith("/console/signin") and "Signed out." in messages(browser)
    assert browser.get_cookie(COOKIE) is None
    browser.add_cookie({key: cookie[key] for key in (
        "name", "value", "path", "httpOnly", "sameSite")})
    browser.get(base(server) + "/console/banks")
    assert browser.current_url.endswith("/console/signin")
    assert not browser.find_elements(By.CSS_SELECTOR, "nav a")  # signed out: no page nav
    page_shot(browser, "flow-11-signed-out")
