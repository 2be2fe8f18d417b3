"""What the Snapshot, Check-an-image and Evaluation browser tests share: a signed-in Chromium
and a signed-in plain-HTTP client (for exact statuses, which a browser does not show)."""

from __future__ import annotations

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.browser import screenshot
from tests.console_client import ConsoleClient
from tests.server_process import ServerProcess
from tests.test_console_pages import _accessible, _navigate


def base(server: ServerProcess) -> str:
    assert server.http_port is not None, "the console is on by default in the all role"
    return f"http://127.0.0.1:{server.http_port}"


def submit(driver: WebDriver, button: WebElement) -> None:
    """Click a form's button and wait until the next page has replaced this one and loaded
    (test_console_pages' way: the old document is marked, not polled)."""
    _navigate(driver, button.click)


def sign_in(driver: WebDriver, server: ServerProcess) -> None:
    driver.get(base(server) + "/console/signin")
    driver.find_element(By.ID, "key").send_keys(server.keys["admin"])
    submit(driver, driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    assert driver.find_elements(By.CSS_SELECTOR, "nav a"), (
        "not signed in: " + driver.find_element(By.TAG_NAME, "main").text)


def signed_in_client(server: ServerProcess) -> ConsoleClient:
    client = ConsoleClient(base(server))
    assert client.sign_in(server.keys["admin"]).status == 303
    return client


def cells(driver: WebDriver, table_id: str) -> list[list[str]]:
    """The text of each body row's cells (th and td) of table `table_id`."""
    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
            for row in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


def button(driver: WebDriver, label: str) -> WebElement:
    return driver.find_element(By.XPATH, f"//button[normalize-space()='{label}']")


def page_shot(driver: WebDriver, name: str) -> None:
    """The accessibility basics every console page must have (test_console_pages), then a
    screenshot for test-artifacts/console/."""
    _accessible(driver)
    screenshot(driver, name)
