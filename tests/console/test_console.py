"""The web console in a real browser (Debian's chromium via Playwright): sign-in, overview,
browsing a node, a file's page, search, keys, live changes, and what each scope may see."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.api.conftest import Api, meta
from tests.console.demo import APP_V1, APP_V2, NGINX_CONF, SHARED, sha

pytestmark = pytest.mark.timeout(180)

KEY_ITEM = "putplace.key"


def sign_in(page: Page, key: str, accepted: bool = True) -> None:
    page.goto("/ui/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard submits the form
    if accepted:  # wait for the console to leave the sign-in page (a later goto would race it)
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_signin_keeps_the_key_out_of_urls_cookies_and_logs(
    page: Page, console_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto("/ui")
    expect(page).to_have_url(re.compile(r"/ui/signin$"))  # no key yet: sent to sign in
    sign_in(page, "pp_" + "x" * 43, accepted=False)
    expect(page.get_by_role("alert")).to_have_text("This key is unknown, revoked or expired.")

    caplog.set_level("INFO")
    sign_in(page, console_api.admin_key)
    expect(page).to_have_url(re.compile(r"/ui$"))
    expect(page.get_by_text("bootstrap admin (admin)")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") == console_api.admin_key
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert urls and not [u for u in urls if console_api.admin_key in u]
    assert console_api.admin_key not in caplog.text
    assert "GET /whoami 200" in caplog.text  # the access log did see the requests

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/ui/signin$"))
    assert page.evaluate(f"sessionStorage.getItem('{KEY_ITEM}')") is None


def test_overview_browse_and_file_page(page: Page, console_api: Api) -> None:
    sign_in(page, console_api.admin_key)
    totals = page.locator("#totals")
    expect(totals).to_contain_text("Nodes3")
    expect(totals).to_contain_text("Files7")
    expect(totals).to_contain_text("Dedup ratio")
    nodes = page.get_by_role("table", name="Nodes that report files")
    expect(nodes.get_by_role("row")).to_have_count(4)  # header + node-1..3
    expect(nodes.get_by_role("link")).to_have_text(["node-1", "node-2", "node-3"])
    recent = page.get_by_role("table", name="Files most recently changed, newest first")
    expect(recent.get_by_role("row").nth(1)).to_contain_text("/etc/app/config.yaml")  # changed last

    nodes.get_by_role("link", name="node-1").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("node-1:/")
    tree = page.get_by_role("table", name="Contents of the directory")
    expect(tree.get_by_role("link")).to_have_text(["etc/", "srv/", "usr/"])
    tree.get_by_role("link", name="etc/").click()
    expect(tree.get_by_role("link")).to_have_text(["app/", "nginx/"])
    tree.get_by_role("link", name="nginx/").click()
    row = tree.get_by_role("row", name=re.compile("nginx.conf"))
    expect(row).to_contain_text("-rw-r--r--")
    expect(row).to_contain_text("1000:1000")
    expect(row).to_contain_text(sha(NGINX_CONF)[:12])
    crumbs = page.get_by_role("navigation", name="Directory")
    expect(crumbs.get_by_role("link")).to_have_text(["node-1", "etc"])
    expect(crumbs.locator("[aria-current=page]")).to_have_text("nginx")

    row.get_by_role("link", name="nginx.conf").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("/etc/nginx/nginx.conf")
    expect(page.locator("#record")).to_contain_text(sha(NGINX_CONF))
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_label("Text of /etc/nginx/nginx.conf")).to_have_text(NGINX_CONF.decode())
    with page.expect_download() as download:
        page.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == "nginx.conf"
    assert open(download.value.path(), "rb").read() == NGINX_CONF


def test_file_history_same_content_and_image_preview(page: Page, console_api: Api) -> None:
    sign_in(page, console_api.admin_key)
    page.goto("/ui/file?host=node-1&path=/etc/app/config.yaml")
    expect(page.locator("#record")).to_contain_text(sha(APP_V2))
    history = page.get_by_role("table", name="Earlier versions of this path, newest first")
    expect(history.get_by_role("row")).to_have_count(2)
    expect(history.get_by_role("row").nth(1)).to_contain_text("replaced")
    expect(history.get_by_role("row").nth(1)).to_contain_text(sha(APP_V1)[:12])

    page.goto("/ui/file?host=node-1&path=/usr/local/bin/entrypoint.sh")
    expect(page.locator("#record")).to_contain_text("-rwxr-xr-x")
    same = page.get_by_role("table", name="Every node and path that holds this content")
    expect(same.get_by_role("row")).to_have_count(3)
    expect(same).to_contain_text("/usr/local/bin/entrypoint.sh (this file)")
    same.get_by_role("link", name="/opt/tools/entrypoint.sh").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("/opt/tools/entrypoint.sh")
    expect(page.locator("#record")).to_contain_text(sha(SHARED))

    page.goto("/ui/file?host=node-1&path=/srv/www/logo.png")
    page.get_by_role("button", name="Preview").click()
    image = page.get_by_role("img", name="Preview of /srv/www/logo.png")
    expect(image).to_be_visible()
    assert page.evaluate("document.querySelector('img.preview').naturalWidth") == 48

    page.goto("/ui/file?host=node-2&path=/var/log/syslog")  # metadata only: nothing to fetch
    expect(page.locator("#record")).to_contain_text("not uploaded")
    expect(page.get_by_role("button", name="Download")).to_be_disabled()


def test_search_by_glob_name_and_sha256(page: Page, console_api: Api) -> None:
    sign_in(page, console_api.admin_key)
    page.get_by_role("link", name="Search").click()
    results = page.get_by_role("table", name="Matching files")
    box = page.get_by_label("Path glob, file name or SHA-256")

    box.fill("entrypoint.sh")
    box.press("Enter")
    expect(results.get_by_role("link")).to_have_text(["/usr/local/bin/entrypoint.sh", "/opt/tools/entrypoint.sh"])

    box.fill("/etc/*.conf")
    box.press("Enter")
    expect(results.get_by_role("link")).to_have_text(["/etc/nginx/nginx.conf"])
    expect(page).to_have_url(re.compile(r"/ui/search\?q=%2Fetc%2F\*\.conf$"))

    page.get_by_label("Node (optional)").fill("node-2")
    box.fill(sha(SHARED))
    box.press("Enter")
    expect(results.get_by_role("link")).to_have_text(["/opt/tools/entrypoint.sh"])

    page.get_by_label("Node (optional)").fill("")
    box.fill("*.nothing")
    box.press("Enter")
    expect(page.get_by_role("status")).to_have_text("No file matches.")


def test_keys_create_shows_once_then_revoke(page: Page, browser: Browser, console_api: Api) -> None:
    sign_in(page, console_api.admin_key)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name", exact=True).fill("ci-reader")
    page.get_by_label("metrics").check()
    page.get_by_label("Rate limit, requests per second (optional)").fill("5")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("New API key")
    expect(shown).to_have_value(re.compile(r"^pp_"))
    new_key = shown.input_value()
    row = page.get_by_role("row", name=re.compile("ci-reader"))
    expect(row).to_contain_text("read, metrics")
    expect(row).to_contain_text("5/s")
    expect(row).to_contain_text("never")
    page.get_by_role("button", name="Done").click()
    expect(shown).to_be_hidden()
    assert new_key not in page.content()  # shown once: gone from the page

    with console_api.http(new_key) as client:
        assert client.get("/whoami").json() == {"name": "ci-reader", "scopes": ["metrics", "read"]}
    page.reload()
    expect(row).not_to_contain_text("never")  # last used, flushed when keys are listed

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("Revoke key ci-reader")).click()
    expect(row).to_contain_text("revoked")
    expect(page.get_by_role("status")).to_have_text("Key ci-reader revoked.")

    other = browser.new_context(base_url=console_api.url).new_page()
    sign_in(other, new_key, accepted=False)
    expect(other.get_by_role("alert")).to_have_text("This key is unknown, revoked or expired.")
    other.context.close()


def test_live_updates_show_new_changes(page: Page, console_api: Api) -> None:
    sign_in(page, console_api.admin_key)
    recent = page.get_by_role("table", name="Files most recently changed, newest first")
    expect(recent.get_by_role("row").nth(1)).to_contain_text("/etc/app/config.yaml")
    path = f"/tmp/live-{datetime.now(UTC).timestamp()}"
    with console_api.http() as client:
        assert client.post("/put_file", json=meta(b"live\n", hostname="node-3", filepath=path)).status_code == 201
    expect(recent.get_by_role("row").nth(1)).to_contain_text(path)  # polled, no reload
    expect(page.get_by_role("status")).to_have_text("1 new change")


@pytest.mark.parametrize(
    ("scopes", "nav", "overview", "keys"),
    [
        (["write"], [], False, False),
        (["metrics"], [], False, False),
        (["read"], ["Overview", "Search"], True, False),
        (["read", "write"], ["Overview", "Search"], True, False),
        (["admin"], ["Overview", "Search", "API keys"], True, True),
    ],
)
def test_each_scope_sees_what_the_api_lets_it(
    page: Page, console_api: Api, scopes: list[str], nav: list[str], overview: bool, keys: bool
) -> None:
    key = console_api.new_key(*scopes)
    sign_in(page, key)
    expect(page.get_by_role("navigation", name="Console").get_by_role("link")).to_have_text(nav)
    if overview:
        expect(page.locator("#totals")).to_contain_text("Files")
    else:
        expect(page.get_by_role("status")).to_contain_text("needs the 'read' scope")
        expect(page.locator("#content")).to_be_empty()
    page.goto("/ui/keys")
    if keys:
        expect(page.get_by_role("table", name="API keys")).to_contain_text("bootstrap admin")
    else:
        expect(page.get_by_role("status")).to_contain_text("needs the 'admin' scope")
        expect(page.locator("#content")).to_be_empty()


def test_content_security_policy_blocks_inline_script(browser: Browser, console_api: Api) -> None:
    context = browser.new_context(base_url=console_api.url)
    page = context.new_page()
    response = page.goto("/ui/signin")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text):
        ran = page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.inlineRan = true';"
            " document.head.append(s); return window.inlineRan === true; }"
        )
    assert ran is False
    script = page.locator("script[type=module]").get_attribute("src")
    context.close()
    assert script is not None and "?v=" in script
    with httpx.Client(base_url=console_api.url) as c:  # no key: the console's files hold no data
        versioned, bare = c.get(script), c.get(script.split("?")[0])
    assert versioned.status_code == 200 and "script-src 'self'" in versioned.headers["content-security-policy"]
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert bare.status_code == 200 and "immutable" not in bare.headers.get("cache-control", "")


def test_pages_load_more_from_the_cursor(page: Page, console_api: Api) -> None:
    """A page shows 50 entries and asks for the next ones only when told to (last: it adds a node)."""
    names = [f"/bulk/f{i:03d}" for i in range(60)]
    with console_api.http() as client:
        files = [meta(n.encode(), hostname="node-4", filepath=n) for n in names]
        assert client.post("/put_files", json={"files": files}).status_code == 201
    sign_in(page, console_api.admin_key)
    page.goto("/ui/browse?host=node-4&dir=/bulk/")
    tree = page.get_by_role("table", name="Contents of the directory")
    expect(tree.get_by_role("link")).to_have_count(50)
    more = page.get_by_role("button", name="More entries")
    more.click()
    expect(tree.get_by_role("link")).to_have_text([n.rsplit("/", 1)[1] for n in names])
    expect(more).to_be_hidden()


def test_an_escaped_name_and_its_literal_text_are_two_files(page: Page, console_api: Api) -> None:
    """A name that is not UTF-8 (byte 0xE9) is stored escaped as ``\\xe9``; a file whose name is
    that literal text is another file, with its own page and history (last: it adds a node)."""
    old, literal, byte = b"literal text, first\n", b"literal text\n", b"byte 0xE9\n"
    with console_api.http() as client:
        for data, escaped in ((old, False), (literal, False), (byte, True)):
            body = meta(data, hostname="node-5", filepath="/names/caf\\xe9", filepath_escaped=escaped)
            answer = client.post("/put_file", json=body)
            assert answer.status_code == 201, answer.text
    sign_in(page, console_api.admin_key)
    tree = page.get_by_role("table", name="Contents of the directory")
    history = page.get_by_role("table", name="Earlier versions of this path, newest first")
    for data, shown, earlier in ((literal, "/names/caf\\xe9", sha(old)), (byte, "(escaped: not UTF-8)", None)):
        page.goto("/ui/browse?host=node-5&dir=/names/")
        expect(tree.get_by_role("link")).to_have_count(2)
        tree.get_by_role("row").filter(has_text=sha(data)[:12]).get_by_role("link").click()
        record = page.locator("#record")
        expect(record).to_contain_text(sha(data))
        expect(record).to_contain_text(shown)
        if earlier is None:
            expect(history).to_contain_text("No earlier versions.")
        else:
            expect(record).not_to_contain_text("escaped")
            expect(history.get_by_role("row")).to_have_count(2)  # header + the first version
            expect(history).to_contain_text(earlier[:12])
