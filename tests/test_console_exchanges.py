"""The console's Exchanges page in headless Chromium against the real server and a loopback
stand-in exchange: "Sync now" applies the list and the page shows the new counts; a sync posted
without its CSRF token, for a bank that is not bound, or while another sync runs, is refused on
the page and syncs nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from hashsvc.server.exchange_schedule import sync_turn
from hashsvc.store import open_store
from indexer.exchanges.sync import sync_bank
from tests.browser import chromium, screenshot
from tests.console_client import ConsoleClient
from tests.ops_console import sign_in
from tests.server_process import ServerProcess
from tests.stand_in import serving
from tests.test_console_pages import _accessible as accessible
from tests.test_console_pages import _navigate as navigate
from tests.test_exchange_admin import ListHandler, hash_list


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    ListHandler.gate.set()
    ListHandler.body = hash_list(range(2))
    home = tmp_path_factory.mktemp("console-exchanges")
    with serving(ListHandler) as base:
        with open_store(home / "store.sqlite") as store:
            store.create_bank("feed")
            store.create_bank("manual")
            store.bind_exchange("feed", "url", {"source": f"{base}/list.csv", "every": 21600})
            sync_bank(store, "feed")  # as `indexer exchange sync` would: not due for 6 h
        ListHandler.body = hash_list(range(4))  # two more upstream since
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


def _syncs(server: ServerProcess) -> list[dict[str, Any]]:
    path = server.home / "audit.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == "exchange_sync"]


def test_sync_now_shows_the_new_counts(server: ServerProcess, browser: webdriver.Chrome) -> None:
    browser.get(f"{_base(server)}/console/exchanges")
    row = browser.find_element(By.ID, "exchange-feed")
    assert "none by this server" in row.text
    assert row.find_element(By.CSS_SELECTOR, "td.totals").text.startswith("2 added")
    assert "every 6 h" in row.text
    assert browser.title == "Exchanges - hashsvc console"

    navigate(browser, row.find_element(By.CSS_SELECTOR, "button[type=submit]").click)
    flash = browser.find_element(By.CSS_SELECTOR, "p.flash").text
    assert flash == ("Synced feed from url: 1 page(s), 2 added, 0 updated, 0 deleted, "
                     "2 unchanged.")
    row = browser.find_element(By.ID, "exchange-feed")
    assert "ok" in row.find_element(By.CSS_SELECTOR, "td.last-run").text
    assert "by admin" in row.text
    assert row.find_element(By.CSS_SELECTOR, "td.totals").text.startswith("4 added")

    ListHandler.body = hash_list([2, 3, 4])  # 0 and 1 gone upstream, 4 new
    navigate(browser, browser.find_element(By.CSS_SELECTOR,
                                           "#exchange-feed button[type=submit]").click)
    assert "1 added, 0 updated, 2 deleted" in browser.find_element(By.CSS_SELECTOR,
                                                                   "p.flash").text
    totals = browser.find_element(By.CSS_SELECTOR, "#exchange-feed td.totals").text
    assert totals.startswith("5 added, 0 updated, 2 deleted")
    accessible(browser)  # labels, buttons, th scope, title, main
    screenshot(browser, "exchanges")
    assert [(r["trigger"], r["caller"], r["added"]) for r in _syncs(server)] == [
        ("manual", "admin", 2), ("manual", "admin", 1)]


def test_a_sync_without_its_csrf_token_or_for_an_unbound_bank_is_refused(
    server: ServerProcess,
) -> None:
    client = ConsoleClient(_base(server))
    assert client.sign_in(server.keys["admin"]).status == 303
    before = len(_syncs(server))
    forged = client.post("/console/exchanges/feed/sync", {})
    assert forged.status == 403 and b"security token is missing" in forged.body.lower()
    wrong = client.post("/console/exchanges/feed/sync", {"csrf_token": "not-the-token"})
    assert wrong.status == 403
    token = client.token("/console/exchanges")
    unbound = client.post("/console/exchanges/manual/sync", {"csrf_token": token})
    assert unbound.status == 404 and b"is not bound to an exchange" in unbound.body.lower()
    assert b"<h1>Exchanges</h1>" in unbound.body and b"Traceback" not in unbound.body
    with open_store(server.home / "store.sqlite") as store, sync_turn(store):  # another worker
        busy = client.post("/console/exchanges/feed/sync", {"csrf_token": token})
    assert busy.status == 409 and b"another process is syncing" in busy.body.lower()
    assert len(_syncs(server)) == before  # nothing ran
