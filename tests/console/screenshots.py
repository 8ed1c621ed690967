"""Take the README's screenshots of the console: ``.venv/bin/python -m tests.console.screenshots``.

Starts an API (SQLite + local disk) on the demo catalogue of the tests, signs in with the
admin key in Debian's chromium and saves one PNG per main page under ``docs/console/``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from tests.api.conftest import ADMIN_KEY, make_settings, meta, serve
from tests.console.conftest import launch
from tests.console.demo import seed
from tests.servers import INSTALLABLE

OUT = Path(__file__).resolve().parents[2] / "docs" / "console"


def shoot(page: Page, url: str, ready: str, name: str, before: str | None = None) -> None:
    page.goto(url)
    expect(page.locator(ready).first).to_be_visible()
    if before:
        page.get_by_role("button", name=before).click()
        expect(page.locator("#preview-area > *")).to_be_visible()
    page.screenshot(path=OUT / f"{name}.png", full_page=True)
    print(OUT / f"{name}.png")


def main() -> int:
    browser_path = INSTALLABLE["chromium"].install()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, serve(make_settings(Path(tmp))) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": ADMIN_KEY}) as client:
            seed(client)
            extra = ["/etc/app/logging.ini", "/etc/app/conf.d/10-cache.yaml", "/etc/app/conf.d/20-db.yaml"]
            files = [meta(p.encode() * 40, hostname="node-1", filepath=p) for p in extra]
            client.post("/put_files", json={"files": files})
            for name in ("ci-reader", "node agents"):
                scopes = ["read"] if name == "ci-reader" else ["write"]
                client.post("/api_keys", json={"name": name, "scopes": scopes, "rate_limit": 20})
        with sync_playwright() as playwright:
            browser = launch(playwright.chromium, browser_path)
            page = browser.new_page(base_url=url, viewport={"width": 1200, "height": 800})
            page.goto("/ui/signin")
            page.screenshot(path=OUT / "signin.png")
            page.get_by_label("API key").fill(ADMIN_KEY)
            page.get_by_label("API key").press("Enter")
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
            shoot(page, "/ui", "#recent tbody tr", "overview")
            shoot(page, "/ui/browse?host=node-1&dir=/etc/app/", "#tree tbody tr", "browse")
            shoot(page, "/ui/file?host=node-1&path=/etc/app/config.yaml", "#history tbody tr", "file", "Preview")
            shoot(page, "/ui/search?q=entrypoint.sh", "#results tbody tr", "search")
            shoot(page, "/ui/keys", "#keys tbody tr", "keys")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
