"""The web console's first pages on a 1,000,000-record SQLite catalogue.

Goal (Issue 15): every console page shows its first page of data in < 300 ms with 1,000,000
records on SQLite, and no page loads the whole catalogue.

Two catalogues are built in the same run, with the same shape: a large one (1,000,000 current
records by default) and a small one (5,000). The small one is the baseline: a page whose cost
follows the page size, not the catalogue, takes about as long on both (ratio ~1); one that
scans the catalogue takes ~1000 times longer.

* **Browser:** Debian's chromium (Playwright), signed in; the time from navigation start to
  the page's first rows on screen, median of ``--rounds``.
* **Requests:** every API call a page makes for its first page, over HTTP with keep-alive,
  median of ``--repeat``; beside it ``GET /files?limit=50`` on the same server, the existing
  cursor API's first page.

Catalogue: ``--hosts`` nodes, each ``/srv/app-NN/data/DDD/file-FFFF.bin`` (10 apps x 50
directories x 100 files per node at the default size; the small one has 5 files per
directory), 40% distinct contents (dedup 2.5x), one record in 10 with a replaced version in
the history. Rows go straight into the store's
own schema (created by ``SqliteStore.open()``): building through ``/put_files`` would take
a minute more and measure nothing here.

    .venv/bin/python bench/console_pages.py [--files 1000000] [--hosts 20] [--rounds 5] [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import ADMIN_KEY, finish_workdir, machine_line, putplace_server, temp_workdir

from putplace_api.store.sqlite import SqliteStore

PAGE = 50  # what console.js asks for
GOAL_MS = 300.0
TOTALS_ONLY = {"overview totals"}  # the catalogue-wide sums of /stats, filled in after the tables
CHROMIUM = "/usr/bin/chromium"


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def build_catalogue(data_dir: Path, files: int, hosts: int) -> dict[str, str]:
    """Fill a new SQLite catalogue; return sample names (host, directory, path, sha) to open."""
    data_dir.mkdir(parents=True)
    db = data_dir / "putplace.db"

    async def schema() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    asyncio.run(schema())
    per_host = files // hosts
    distinct = max(1, files * 2 // 5)
    now = time.time()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    n = 0

    def rows() -> Iterator[tuple[object, ...]]:
        nonlocal n
        for h in range(hosts):
            for i in range(per_host):
                # every node has the same 50 directories per app, however many files it holds:
                # the small baseline catalogue shows the same directory pages, with fewer files
                app, rest = divmod(i, 5000)
                f, directory = divmod(rest, 50)
                path = f"/srv/app-{app:02d}/data/{directory:03d}/file-{f:04d}.bin"
                updated = now - (files - n) * 0.5  # newest last, half a second apart
                # ObjectId-shaped ids that sort by creation, as the store's own do
                yield (
                    f"{int(updated):08x}{n:016x}",
                    f"node-{h:02d}",
                    path,
                    "10.0.0.1",
                    _sha(n % distinct),
                    4096 + n % 65536,
                    0o100644,
                    1000,
                    1000,
                    updated,
                    updated,
                    updated,
                    updated,
                    updated,
                )
                n += 1

    with conn:
        conn.executemany(
            "INSERT INTO files (id, hostname, filepath, ip_address, sha256, file_size, file_mode, file_uid, file_gid,"
            " file_mtime, file_atime, file_ctime, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        conn.executemany(
            "INSERT INTO contents (sha256, size, stored, first_seen_at, stored_at, mime_type, storage_path)"
            " VALUES (?, ?, 1, ?, ?, 'application/octet-stream', ?)",
            ((_sha(i), 4096 + i % 65536, now, now, f"{_sha(i)[:2]}/{_sha(i)}") for i in range(distinct)),
        )
    with conn:  # one record in 10 was replaced once: its earlier version is in the history
        conn.execute(
            "INSERT INTO file_history (id, hostname, filepath, ip_address, sha256, file_size, file_mode, file_uid,"
            " file_gid, file_mtime, file_atime, file_ctime, created_at, updated_at, superseded_at, event)"
            " SELECT id, hostname, filepath, ip_address, sha256, file_size - 1, file_mode, file_uid, file_gid,"
            " file_mtime - 86400, file_atime, file_ctime, created_at - 86400, updated_at - 86400, updated_at,"
            " 'replaced' FROM files WHERE filepath LIKE '%0.bin'"
        )
    host, path = f"node-{hosts // 2:02d}", "/srv/app-00/data/017/file-0003.bin"
    (sha,) = conn.execute("SELECT sha256 FROM files WHERE hostname = ? AND filepath = ?", (host, path)).fetchone()
    conn.close()
    return {"host": host, "dir": "/srv/app-00/data/017/", "wide_dir": "/srv/app-00/data/", "path": path, "sha": sha}


def page_requests(s: dict[str, str]) -> dict[str, list[tuple[str, dict[str, object]]]]:
    """What each page asks the API for its first page (console.js), in the order it asks."""
    return {
        "overview": [
            ("/whoami", {}),
            ("/stats", {}),
            ("/nodes", {"limit": PAGE}),
            ("/files/recent", {"limit": PAGE}),
        ],
        "browse (directory of files)": [
            ("/whoami", {}),
            ("/files/tree", {"hostname": s["host"], "dir": s["dir"], "limit": PAGE}),
        ],
        "browse (directory of directories)": [
            ("/whoami", {}),
            ("/files/tree", {"hostname": s["host"], "dir": s["wide_dir"], "limit": PAGE}),
        ],
        "file": [
            ("/whoami", {}),
            ("/files/current", {"hostname": s["host"], "filepath": s["path"]}),
            ("/files", {"sha256": s["sha"], "limit": PAGE}),
            ("/files/history", {"hostname": s["host"], "filepath": s["path"], "limit": PAGE}),
        ],
        "search by name": [("/whoami", {}), ("/files/search", {"q": "file-0003.bin", "limit": PAGE})],
        "search by path glob": [("/whoami", {}), ("/files/search", {"q": "/srv/app-0?/data/017/*", "limit": PAGE})],
        "search by sha256": [("/whoami", {}), ("/files", {"sha256": s["sha"], "limit": PAGE})],
        "keys": [("/whoami", {}), ("/api_keys", {})],
        # the worst case of a glob: nothing matches, so the page reads every record
        "search, no match (API only)": [("/files/search", {"q": "no-such-name-*", "limit": PAGE})],
    }


BASELINE: tuple[str, dict[str, object]] = ("/files", {"limit": PAGE})  # the existing cursor API's first page
BASELINE_NAME = f"baseline: /files?limit={PAGE}"


def time_requests(url: str, s: dict[str, str], repeat: int) -> dict[str, float]:
    """Median ms of every request of every page (named "page: path"), and of the baseline."""
    calls = {f"{page}: {path}": (path, q) for page, reqs in page_requests(s).items() for path, q in reqs}
    calls[BASELINE_NAME] = BASELINE
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, headers={"X-API-Key": ADMIN_KEY}, timeout=120) as c:
        for name, (path, params) in calls.items():
            times = []
            for _ in range(repeat + 1):  # the first warms caches and is dropped
                t0 = time.perf_counter()
                r = c.get(path, params=params)
                times.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"error: GET {path} {params} answered {r.status_code}: {r.text[:200]}")
            out[name] = statistics.median(times[1:])
    return out


# What each page shows once its first page of data is on screen.
READY = {
    "overview": "#recent tbody tr",
    "browse (directory of files)": "#tree tbody tr",
    "browse (directory of directories)": "#tree tbody tr",
    "file": "#history tbody tr",
    "search by name": "#results tbody tr",
    "search by path glob": "#results tbody tr",
    "search by sha256": "#results tbody tr",
    "keys": "#keys tbody tr",
    "overview totals": "#totals div",
}


def page_urls(s: dict[str, str]) -> dict[str, str]:
    from urllib.parse import urlencode

    return {
        "overview": "/ui",
        "overview totals": "/ui",
        "browse (directory of files)": "/ui/browse?" + urlencode({"host": s["host"], "dir": s["dir"]}),
        "browse (directory of directories)": "/ui/browse?" + urlencode({"host": s["host"], "dir": s["wide_dir"]}),
        "file": "/ui/file?" + urlencode({"host": s["host"], "path": s["path"]}),
        "search by name": "/ui/search?" + urlencode({"q": "file-0003.bin"}),
        "search by path glob": "/ui/search?" + urlencode({"q": "/srv/app-0?/data/017/*"}),
        "search by sha256": "/ui/search?" + urlencode({"q": s["sha"]}),
        "keys": "/ui/keys",
    }


# Runs in the page before its scripts: notes when the page's first rows enter the DOM, in ms
# since navigation start (performance.now()), so no Playwright round trip is counted.
_OBSERVE = """
new MutationObserver((_, observer) => {
  const selector = window.__readySelector;
  if (selector && document.querySelector(selector)) {
    window.__firstRows = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


def time_pages(url: str, s: dict[str, str], rounds: int) -> dict[str, float]:
    """Median ms from navigation start to the first rows in the page, per page, in chromium."""
    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(base_url=url)
        page = context.new_page()
        page.goto("/ui/signin")
        page.get_by_label("API key").fill(ADMIN_KEY)
        page.get_by_label("API key").press("Enter")
        page.get_by_role("button", name="Sign out").wait_for()
        for name, target in page_urls(s).items():
            page.add_init_script(f"window.__readySelector = {json.dumps(READY[name])};" + _OBSERVE)
            times = []
            for _ in range(rounds + 1):  # the first loads the static files into the cache; dropped
                page.goto(target)
                page.wait_for_selector(READY[name], timeout=120_000)
                times.append(float(page.evaluate("window.__firstRows")))
                # let the page finish (the overview's totals): a next load would wait behind it
                page.wait_for_load_state("networkidle")
            out[name] = statistics.median(times[1:])
        browser.close()
    return out


def measure(
    data_dir: Path, work: Path, s: dict[str, str], rounds: int, repeat: int
) -> tuple[dict[str, float], dict[str, float]]:
    with putplace_server(data_dir, work) as server:
        requests = time_requests(server.base_url, s, repeat)
        pages = time_pages(server.base_url, s, rounds)
    return requests, pages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000, help="records of the large catalogue")
    ap.add_argument("--small", type=int, default=5_000, help="records of the baseline catalogue")
    ap.add_argument("--hosts", type=int, default=20, help="nodes in each catalogue")
    ap.add_argument("--rounds", type=int, default=5, help="page loads per page (median)")
    ap.add_argument("--repeat", type=int, default=15, help="calls per API request (median)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (databases, server logs)")
    args = ap.parse_args()
    if not Path(CHROMIUM).is_file():
        sys.exit(f"error: {CHROMIUM} is missing; install it with: .venv/bin/python -m tests.servers install chromium")
    work = temp_workdir("console")
    try:
        results = {}
        for label, files in (("small", args.small), ("large", args.files)):
            t0 = time.perf_counter()
            sample = build_catalogue(work / f"data-{label}", files, args.hosts)
            print(
                f"built the {label} catalogue ({files:,} records) in {time.perf_counter() - t0:.0f} s", file=sys.stderr
            )
            results[label] = measure(work / f"data-{label}", work, sample, args.rounds, args.repeat)
    finally:
        finish_workdir(work, args.keep)

    (small_req, small_pages), (large_req, large_pages) = results["small"], results["large"]
    print(machine_line())
    print(f"\nBrowser: navigation start -> first rows on screen (median of {args.rounds}), chromium headless\n")
    print(f"| page | {args.files:,} records ms | {args.small:,} records ms | ratio | < {GOAL_MS:.0f} ms |")
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for name, ms in large_pages.items():
        ok = "pass" if ms < GOAL_MS else "**missed**"
        if name in TOTALS_ONLY:
            ok = "(not a first page: `/stats` scans the catalogue)"
        else:
            worst = max(worst, ms)
        print(f"| {name} | {ms:.0f} | {small_pages[name]:.0f} | {ms / small_pages[name]:.2f} | {ok} |")
    base = large_req[BASELINE_NAME]
    print(f"\nAPI requests (median of {args.repeat}, keep-alive); baseline `GET /files?limit={PAGE}`: {base:.1f} ms\n")
    print(f"| request | {args.files:,} records ms | vs baseline | {args.small:,} records ms |")
    print("| --- | --- | --- | --- |")
    for key, ms in large_req.items():
        print(f"| `{key}` | {ms:.1f} | {ms / base:.1f}x | {small_req[key]:.1f} |")
    verdict = "pass" if worst < GOAL_MS else "missed"
    print(
        f"\nverdict: slowest first page {worst:.0f} ms with {args.files:,} records (goal < {GOAL_MS:.0f} ms): {verdict}"
    )
    print(
        json.dumps(
            {
                "bench": "console_pages",
                "files": args.files,
                "pages_ms": large_pages,
                "baseline_pages_ms": small_pages,
                "requests_ms": large_req,
                "verdict": verdict,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
