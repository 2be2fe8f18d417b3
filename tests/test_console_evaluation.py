"""The console's Evaluation page in headless Chromium against the real server: a NOT_FOUND
message before any report; then the figures and plots of a real (tiny) `indexer evaluate
--to-home` run, the plots served by the console from the RPC's bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from hashsvc.home import DataHome
from tests.browser import chromium
from tests.ops_console import base, cells, page_shot, sign_in, signed_in_client
from tests.server_process import ServerProcess
from tests.test_server import _seed_bridge_bank
from tests.tiny_evaluation import PHOTO_COUNT, make_report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("console-evaluation")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def driver(server: ServerProcess) -> Iterator[WebDriver]:
    with chromium(height=1800) as browser:
        sign_in(browser, server)
        yield browser


def test_without_a_report_the_page_says_how_to_make_one(server: ServerProcess,
                                                         driver: WebDriver) -> None:
    driver.get(base(server) + "/console/evaluation")
    assert "no evaluation report has been made" in driver.find_element(
        By.CSS_SELECTOR, "p.flash-error").text.lower()
    assert not driver.find_elements(By.ID, "methods")
    assert signed_in_client(server).get("/console/evaluation").status == 404


def test_the_latest_report_shows_its_figures_and_plots(server: ServerProcess, driver: WebDriver,
                                                       tmp_path: Path) -> None:
    make_report(DataHome(server.home), tmp_path)
    driver.get(base(server) + "/console/evaluation")
    assert f"{PHOTO_COUNT} originals" in driver.find_element(By.ID, "summary").text
    methods = {row[0]: row for row in cells(driver, "methods")}
    assert set(methods) == {"pdq", "pdq+dihedral"}
    assert methods["pdq"][2] == "31" and methods["pdq"][3] == "50.0%"
    assert methods["pdq+dihedral"][3] == "100.0%"
    plots = driver.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) == 3
    for plot in plots:
        source = plot.get_attribute("src") or ""
        assert "/console/evaluation/plots/" in source and str(server.home) not in source
        assert driver.execute_script("return arguments[0].naturalWidth", plot) > 0  # it loaded
    page_shot(driver, "evaluation")
    client = signed_in_client(server)
    served = client.get("/console/evaluation/plots/recall_vs_fpr.png")
    assert served.status == 200 and served.headers["content-type"] == "image/png"
    assert served.body.startswith(b"\x89PNG")
    assert client.get("/console/evaluation/plots/..%2Fstore.sqlite").status == 404
