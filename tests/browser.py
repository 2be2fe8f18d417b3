"""Headless Chromium driven by Selenium, for the web console's tests.

Debian's `chromium` and `chromium-driver` (installed by .ci/run); Selenium Manager is never asked
to download a browser (no internet here): the driver's path is given. `--no-sandbox` because CI
runs as root, where Chromium's sandbox refuses to start. Screenshots go to
`test-artifacts/console/` (kept by CI, two are in the README).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
MISSING = "headless Chromium not installed: apt-get install -y chromium chromium-driver"


def chromium_available() -> bool:
    return shutil.which("chromium") is not None and shutil.which("chromedriver") is not None


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless Chromium; without Debian's packages, the test that asked for one (through a
    fixture) skips, naming them, as the upload-corpus tests do for their encoders. Only the
    browser tests skip: a module's urllib tests run without it."""
    if not chromium_available():
        pytest.skip(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},{height}",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        options.add_argument(argument)
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
