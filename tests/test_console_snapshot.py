"""The console's Snapshot page in headless Chromium against the real server: each replica's
served version and pending changes, an unreachable one marked, and Publish changing the version
shown."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hashsvc_client import Client
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.browser import chromium
from tests.ops_console import base, button, cells, page_shot, sign_in, signed_in_client, submit
from tests.server_process import ServerProcess
from tests.test_replicas import HANG_GUARD, _dead_address
from tests.test_server import _seed_bridge_bank


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A scan replica on the server's store and snapshots (it makes the keys file both use)."""
    home = tmp_path_factory.mktemp("console-snapshot")
    _seed_bridge_bank(home)
    with ServerProcess(home, "--role", "scan") as process:
        yield process


@pytest.fixture(scope="module")
def server(replica: ServerProcess) -> Iterator[ServerProcess]:
    with ServerProcess(replica.home, "--replicas", f"{replica.target},{_dead_address()}",
                       keys={}) as process:
        process.keys = replica.keys
        yield process


@pytest.fixture(scope="module")
def driver(server: ServerProcess) -> Iterator[WebDriver]:
    with chromium() as browser:
        sign_in(browser, server)
        yield browser


def test_publish_changes_the_served_version_shown(server: ServerProcess, replica: ServerProcess,
                                                  driver: WebDriver) -> None:
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        before = admin.index_status().version
        admin.add_entries("bridge", [(("pdq", bytes(32)), "zeros", None)])
    driver.get(base(server) + "/console/snapshot")
    assert driver.title.startswith("Snapshot")
    this, scan, dead = cells(driver, "replicas")
    assert "(this server)" in this[0] and this[2] == before
    assert this[5] == "1" and this[6] == "current"  # one change since the snapshot
    assert scan[0] == replica.target and scan[1] == "scan" and scan[2] == before
    assert scan[5] == "1"
    assert dead[-1] == "unreachable" and "UNAVAILABLE" in dead[1]
    page_shot(driver, "snapshot")
    submit(driver, button(driver, "Publish snapshot"))
    flash = driver.find_element(By.CSS_SELECTOR, "p.flash").text
    assert flash.startswith("Published snapshot ")
    this, scan, _dead = cells(driver, "replicas")
    published = this[2]
    assert published != before and published in flash and this[5] == "0"
    deadline = time.monotonic() + HANG_GUARD
    while scan[2] != published:  # the replica loads it at its next look at the repository
        assert time.monotonic() < deadline, "the replica never showed the published version"
        time.sleep(0.2)
        driver.refresh()
        _this, scan, _dead = cells(driver, "replicas")
    assert scan[5] == "0" and scan[6] == "current"
    page_shot(driver, "snapshot-published")
    submit(driver, button(driver, "Publish snapshot"))
    assert "Nothing to publish" in driver.find_element(By.CSS_SELECTOR, "p.flash").text


def test_publish_without_the_csrf_token_is_refused_and_publishes_nothing(
        server: ServerProcess) -> None:
    client = signed_in_client(server)
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.add_entries("bridge", [(("pdq", bytes([1]) * 32), "ones", None)])
        before = admin.index_status()
        refused = client.post("/console/snapshot/publish", {"force": "on"})
        assert refused.status == 403
        assert admin.index_status().version == before.version and not before.up_to_date

