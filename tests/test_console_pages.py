"""The console's sign-in, Banks and Entries pages in a real headless Chromium against a real
server: one server and one browser for the module, the tests in order (an analyst's session:
sign in, create a bank, import a list, edit it, look up an entry, disable it, export, sign out).
Each page is checked for the basics of accessibility and saved as a screenshot
(test-artifacts/console/). What the browser did is checked with the gRPC client."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hashsvc_client import Client
from selenium.common.exceptions import WebDriverException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from hashsvc.home import DataHome
from indexer.hashlists import read_hash_list
from tests.browser import chromium, screenshot
from tests.conftest import run_indexer
from tests.console_client import ConsoleClient
from tests.server_process import ServerProcess

BANK = "analyst-test"
WAIT = 60  # seconds: a hang guard only; every wait ends as soon as its page is there


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("console-pages")) as process:
        yield process


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


def _base(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def _submit(driver: Chrome, button_text: str) -> None:
    """Click the button and wait for the page it posts to."""
    _navigate(driver, lambda: driver.find_element(
        By.XPATH, f"//button[normalize-space()='{button_text}']").click())


def _navigate(driver: Chrome, action: Callable[[], None]) -> None:
    """Do `action`, then wait until a new document has replaced this one and has loaded (the
    old one is marked; while the browser swaps them a script may fail, which means "not yet")."""
    driver.execute_script("window.__consoleTestOldPage = true")
    action()
    WebDriverWait(driver, WAIT, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return !window.__consoleTestOldPage && document.readyState === 'complete'"))


def _messages(driver: Chrome) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash")]


def _accessible(driver: Chrome) -> None:
    """What every console page must have: a title, landmarks, a label for every field, real
    buttons, and header cells that say what they head."""
    problems = driver.execute_script("""
        const problems = [];
        if (!document.title.trim()) problems.push('no title');
        if (!document.querySelector('main')) problems.push('no main');
        for (const field of document.querySelectorAll('input, select, textarea')) {
          if (field.type === 'hidden') continue;
          if (!field.labels || field.labels.length === 0) problems.push('no label: ' + field.name);
        }
        for (const th of document.querySelectorAll('th')) {
          if (!th.getAttribute('scope')) problems.push('th without scope: ' + th.textContent);
        }
        const fake = '[onclick], input[type=submit], input[type=button], input[type=image]';
        for (const e of document.querySelectorAll(fake))
          problems.push('not a <button>: ' + e.outerHTML.slice(0, 60));
        return problems;""")
    assert problems == [], problems


def _page(driver: Chrome, name: str) -> None:
    _accessible(driver)
    screenshot(driver, name)


def _sign_in(driver: Chrome, server: ServerProcess, key: str) -> None:
    driver.get(_base(server) + "/console/")
    assert driver.current_url.endswith("/console/signin")
    driver.find_element(By.ID, "key").send_keys(key)
    _submit(driver, "Sign in")


def test_a_wrong_key_is_refused(browser: Chrome, server: ServerProcess) -> None:
    _sign_in(browser, server, "hs_not_a_key_of_this_server")
    assert "This key is not known to the server." in _messages(browser)
    assert browser.get_cookie("hashsvc_console") is None
    _page(browser, "signin-refused")


def test_a_scan_only_key_is_refused(browser: Chrome, server: ServerProcess) -> None:
    _sign_in(browser, server, server.keys["scanner"])
    assert any("admin role" in m for m in _messages(browser))
    assert browser.get_cookie("hashsvc_console") is None


def test_an_admin_key_signs_in(browser: Chrome, server: ServerProcess) -> None:
    _sign_in(browser, server, server.keys["admin"])
    assert browser.current_url.endswith("/console/banks")
    assert "Signed in." in _messages(browser)
    cookie = browser.get_cookie("hashsvc_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    assert nav == ["Banks", "Entries", "Exchanges", "Matches", "Snapshot", "Check an image",
                   "Evaluation"]


def test_create_a_bank(browser: Chrome, server: ServerProcess, admin: Client) -> None:
    browser.find_element(By.ID, "name").send_keys(BANK)
    browser.find_element(By.ID, "description").send_keys("Hashes from the test exchange")
    browser.find_element(By.ID, "tags").send_keys("csam, test")
    browser.find_element(By.ID, "threshold_pdq").send_keys("28")
    _submit(browser, "Create bank")
    assert browser.current_url.endswith(f"/console/banks/{BANK}")
    assert f"Bank {BANK} created." in _messages(browser)
    bank = next(b for b in admin.list_banks() if b.name == BANK)
    assert (dict(bank.thresholds), list(bank.tags)) == ({"pdq": 28}, ["csam", "test"])


def test_a_refused_bank_name_is_shown_and_nothing_is_created(
        browser: Chrome, server: ServerProcess, admin: Client) -> None:
    browser.get(_base(server) + "/console/banks")
    # The browser's own pattern check would stop this name: post past it, as a script could.
    browser.execute_script("document.getElementById('name').removeAttribute('pattern')")
    browser.find_element(By.ID, "name").send_keys("no spaces allowed")
    _submit(browser, "Create bank")
    assert any("Invalid bank name" in m for m in _messages(browser))
    assert [b.name for b in admin.list_banks()] == [BANK]


def _hash_list(tmp_path: Path, rows: int, bad_line: str | None = None) -> Path:
    lines = ["hash,algorithm,external_id,source"]
    lines += [f"{n:032x},md5,case-{n},test-exchange" for n in range(rows)]
    lines += [bad_line] if bad_line else []
    path = tmp_path / ("bad.csv" if bad_line else "list.csv")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_a_list(browser: Chrome, server: ServerProcess, admin: Client,
                       tmp_path: Path) -> None:
    browser.get(_base(server) + f"/console/banks/{BANK}")
    browser.find_element(By.ID, "list").send_keys(str(_hash_list(tmp_path, 20)))
    _submit(browser, "Import")
    assert "Imported list.csv into analyst-test: 20 added, 0 already there." in \
        _messages(browser)
    assert "md5: 20 enabled" in browser.find_element(By.TAG_NAME, "main").text
    _page(browser, "bank")
    assert next(b for b in admin.list_banks() if b.name == BANK).entry_count == 20


def test_a_list_with_a_bad_line_imports_nothing_and_names_the_line(
        browser: Chrome, server: ServerProcess, admin: Client, tmp_path: Path) -> None:
    browser.get(_base(server) + f"/console/banks/{BANK}")
    path = _hash_list(tmp_path, 30, bad_line="not-a-hash,md5,case-x,test")
    browser.find_element(By.ID, "list").send_keys(str(path))
    _submit(browser, "Import")
    message = " ".join(_messages(browser))
    assert "Nothing was imported" in message and "bad.csv:32: invalid md5 hash" in message
    assert next(b for b in admin.list_banks() if b.name == BANK).entry_count == 20


def test_edit_thresholds_and_strategies(browser: Chrome, server: ServerProcess,
                                        admin: Client) -> None:
    threshold = browser.find_element(By.ID, "threshold_pdq")
    threshold.clear()
    threshold.send_keys("24")
    browser.find_element(By.ID, "trim_borders").click()
    _submit(browser, "Save settings")
    assert f"Bank {BANK} updated: thresholds, strategies." in _messages(browser)
    bank = next(b for b in admin.list_banks() if b.name == BANK)
    assert dict(bank.thresholds) == {"pdq": 24} and bank.strategies.trim_borders
    assert not bank.strategies.no_dihedral and list(bank.tags) == ["csam", "test"]


def test_disable_and_enable_a_bank(browser: Chrome, server: ServerProcess,
                                   admin: Client) -> None:
    browser.get(_base(server) + "/console/banks")
    _submit(browser, f"Disable {BANK}")
    assert f"Bank {BANK} disabled." in _messages(browser)
    assert not next(b for b in admin.list_banks() if b.name == BANK).enabled
    _submit(browser, f"Enable {BANK}")
    assert next(b for b in admin.list_banks() if b.name == BANK).enabled
    _page(browser, "banks")


def test_look_up_an_entry(browser: Chrome, server: ServerProcess) -> None:
    browser.get(_base(server) + "/console/entries")
    browser.find_element(By.ID, "q").send_keys("case-7")
    _submit(browser, "Search")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 1 and "case-7" in rows[0].text
    _page(browser, "entries")
    _navigate(browser, rows[0].find_element(By.TAG_NAME, "a").click)
    main = browser.find_element(By.TAG_NAME, "main").text
    assert f"{7:032x}" in main and '"source": "test-exchange"' in main


def test_look_up_by_hash(browser: Chrome, server: ServerProcess) -> None:
    browser.get(_base(server) + "/console/entries")
    Select(browser.find_element(By.ID, "by")).select_by_visible_text("Hash")
    Select(browser.find_element(By.ID, "algorithm")).select_by_visible_text("md5")
    browser.find_element(By.ID, "q").send_keys(f"{11:032x}")
    _submit(browser, "Search")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 1 and "case-11" in rows[0].text


def test_look_up_by_exchange_id(browser: Chrome, server: ServerProcess,
                                tmp_path: Path) -> None:
    home = DataHome(server.home)
    feed = tmp_path / "feed.csv"
    feed.write_text("algorithm,hash,external_id\n"
                    + "".join(f"md5,{n:032x},feed-{n}\n" for n in range(100, 103)))
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(feed),
                check=True)
    run_indexer(home, "exchange", "sync", "feed", check=True)
    browser.get(_base(server) + "/console/entries")
    Select(browser.find_element(By.ID, "by")).select_by_visible_text("Exchange id")
    browser.find_element(By.ID, "q").send_keys(f"md5:{101:032x}")
    browser.find_element(By.ID, "exchange").send_keys("file")
    _submit(browser, "Search")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 1 and "feed-101" in rows[0].text
    _navigate(browser, rows[0].find_element(By.TAG_NAME, "a").click)
    provenance = browser.find_element(By.XPATH, "//h2[@id='provenance']/following::table[1]")
    assert f"md5:{101:032x}" in provenance.text and "file" in provenance.text


def test_disable_and_enable_an_entry(browser: Chrome, server: ServerProcess,
                                     admin: Client) -> None:
    entry = next(admin.iter_entries(external_id="case-7"))
    browser.get(_base(server) + f"/console/entries/{entry.id}")
    # No reason: the browser asks for one (`required`); past that, the server refuses too.
    browser.execute_script("document.getElementById('reason').removeAttribute('required')")
    _submit(browser, "Disable entry")
    assert any("Give a reason" in m for m in _messages(browser))
    assert not admin.get_entry(entry.id).disabled
    browser.find_element(By.ID, "reason").send_keys("false positive: a stock photo")
    _submit(browser, "Disable entry")
    assert f"Entry {entry.id} disabled." in _messages(browser)
    got = admin.get_entry(entry.id)
    assert got.disabled and got.disabled_reason == "false positive: a stock photo"
    _page(browser, "entry")
    _submit(browser, "Enable entry")
    assert not admin.get_entry(entry.id).disabled


def _browser_client(browser: Chrome, server: ServerProcess) -> ConsoleClient:
    """urllib with the browser's session cookie: what the browser's session can fetch."""
    client = ConsoleClient(_base(server))
    cookie = browser.get_cookie("hashsvc_console")
    assert cookie is not None
    client.cookies["hashsvc_console"] = cookie["value"]
    return client


def test_export_a_search(browser: Chrome, server: ServerProcess, tmp_path: Path) -> None:
    browser.get(_base(server) + f"/console/entries?by=external_id&q=&bank={BANK}")
    links = {a.text: a.get_attribute("href") or ""
             for a in browser.find_elements(By.CSS_SELECTOR, "a[download]")}
    client = _browser_client(browser, server)
    full = client.get(links["Export as CSV"].removeprefix(_base(server)))
    assert full.status == 200 and "attachment" in full.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(full.body.decode())))
    assert len(rows) == 20 and {r["bank"] for r in rows} == {BANK}
    back = client.get(links["Export for import"].removeprefix(_base(server)))
    path = tmp_path / "exported.csv"
    path.write_bytes(back.body)
    parsed = list(read_hash_list(path, "csv"))
    assert len(parsed) == 20 and all(not isinstance(p, Exception) for p in parsed)
    assert {p.external_id for p in parsed} == {f"case-{n}" for n in range(20)}  # type: ignore[union-attr]


def test_a_form_posted_without_its_csrf_token_is_refused(
        browser: Chrome, server: ServerProcess, admin: Client) -> None:
    client = _browser_client(browser, server)
    answer = client.post("/console/banks", {"name": "forged", "kind": "match"})
    assert answer.status == 403 and b"security token" in answer.body
    assert "forged" not in [b.name for b in admin.list_banks()]


def test_sign_out_and_the_old_cookie_no_longer_works(
        browser: Chrome, server: ServerProcess, admin: Client) -> None:
    stolen = _browser_client(browser, server)
    token = stolen.token("/console/banks")
    browser.get(_base(server) + "/console/banks")
    _submit(browser, "Sign out")
    assert browser.current_url.endswith("/console/signin")
    assert "Signed out." in _messages(browser)
    _page(browser, "signin")
    assert stolen.get("/console/banks").status == 303
    replayed = stolen.post("/console/banks", {"csrf_token": token, "name": "replayed",
                                              "kind": "match", "dihedral": "on"})
    assert replayed.status == 401
    # Signed in again, the old session's token is refused with the new session too.
    _sign_in(browser, server, server.keys["admin"])
    fresh = _browser_client(browser, server)
    assert fresh.post("/console/banks", {"csrf_token": token, "name": "replayed",
                                         "kind": "match"}).status == 403
    assert "replayed" not in [b.name for b in admin.list_banks()]
