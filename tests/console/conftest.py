"""Fixtures of the web console tests: one API (SQLite + local disk) with the demo catalogue,
and Debian's chromium driven by Playwright (never Playwright's own browser download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, BrowserType, Page, expect, sync_playwright

from tests.api.conftest import ADMIN_KEY, Api, make_settings, serve
from tests.console.demo import seed

# Deadlines for conditions awaited (a busy 2-core machine must not fail a test), not speed bounds:
# longer than the console's 5 s polling of recent changes.
expect.set_options(timeout=20_000)


def launch(chromium: BrowserType, executable: Path) -> Browser:
    """Debian's chromium, never a browser Playwright downloads; --no-sandbox: the tests run as
    root, where chromium refuses its sandbox."""
    return chromium.launch(executable_path=str(executable), headless=True, args=["--no-sandbox"])


@pytest.fixture(scope="module")
def console_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = make_settings(tmp_path_factory.mktemp("console"))
    with serve(settings) as url:
        api = Api(url, ADMIN_KEY, settings)
        with api.http() as client:
            seed(client)
        yield api


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright.chromium, chromium)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser, console_api: Api) -> Iterator[BrowserContext]:
    """A fresh browser profile (empty session storage) that fails the test on any page error
    or Content-Security-Policy violation."""
    context = browser.new_context(base_url=console_api.url)
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    context.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" and "401" not in message.text else None,
    )
    yield context
    context.close()
    assert not errors, errors


@pytest.fixture
def page(context: BrowserContext) -> Page:
    page = context.new_page()
    page.set_default_timeout(20_000)
    return page
