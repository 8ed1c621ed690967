"""The catalogue-browsing queries of the web console (``routes/browse.py``) on each backend
pair: directory pages by skip scan, glob search, recent changes with ties, nodes, one record."""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.conftest import Api, meta


def _all_pages(client: httpx.Client, url: str, **params: Any) -> list[list[Any]]:
    """Every page of a listing, each page as returned; fails if the cursor loops."""
    pages: list[list[Any]] = []
    cursor = None
    while True:
        r = client.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50


def _put(client: httpx.Client, host: str, *paths: str) -> None:
    files = [meta(p.encode(), hostname=host, filepath=p) for p in paths]
    assert client.post("/put_files", json={"files": files}).status_code == 201


def test_tree_pages_children_and_skips_whole_subtrees(backend_api: Api) -> None:
    with backend_api.http() as c:
        deep = [f"/data/big/{i:03d}/f" for i in range(30)]  # one directory entry, however deep
        _put(c, "node-1", "/data/a", "/data/b.txt", "/data/c/x", "/data/c/y/z", "/data-sibling", "/data/~", *deep)
        _put(c, "node-2", "/data/other")
        pages = _all_pages(c, "/files/tree", hostname="node-1", dir="/data", limit=2)
        assert [len(p) for p in pages] == [2, 2, 1]
        entries = [(e["name"], e["path"], e["kind"]) for p in pages for e in p]
        assert entries == [
            ("a", "/data/a", "file"),
            ("b.txt", "/data/b.txt", "file"),
            ("big", "/data/big/", "dir"),
            ("c", "/data/c/", "dir"),
            ("~", "/data/~", "file"),
        ]
        files = [e["file"] for p in pages for e in p if e["kind"] == "file"]
        assert [f["filepath"] for f in files] == ["/data/a", "/data/b.txt", "/data/~"]
        assert all(f["hostname"] == "node-1" and f["has_file_content"] is False for f in files)
        assert [e["path"] for e in c.get("/files/tree", params={"hostname": "node-1"}).json()["items"]] == [
            "/data-sibling",
            "/data/",
        ]
        sub = c.get("/files/tree", params={"hostname": "node-1", "dir": "/data/c/"}).json()
        assert [(e["name"], e["kind"]) for e in sub["items"]] == [("x", "file"), ("y", "dir")]
        assert c.get("/files/tree", params={"hostname": "node-9"}).json() == {"items": [], "next_cursor": None}
        assert c.get("/files/tree", params={"hostname": "node-1", "dir": ""}).status_code == 422


def test_search_globs_names_and_pages(backend_api: Api) -> None:
    with backend_api.http() as c:
        _put(c, "node-1", "/etc/a.conf", "/etc/nginx/b.conf", "/etc/c.cfg", "/var/a.conf", "/etc/[x].conf")
        _put(c, "node-2", "/etc/a.conf", "/etc/b.Conf")

        def paths(q: str, **extra: Any) -> list[tuple[str, str]]:
            pages = _all_pages(c, "/files/search", q=q, limit=2, **extra)
            return [(f["hostname"], f["filepath"]) for p in pages for f in p]

        assert paths("a.conf") == [("node-1", "/etc/a.conf"), ("node-1", "/var/a.conf"), ("node-2", "/etc/a.conf")]
        assert paths("/etc/*.conf", hostname="node-1") == [
            ("node-1", "/etc/a.conf"),
            ("node-1", "/etc/nginx/b.conf"),  # * crosses /
            ("node-1", "/etc/[x].conf"),
        ]
        assert paths("/etc/?.c[!o]g") == [("node-1", "/etc/c.cfg")]
        assert paths("[[]x].conf") == [("node-1", "/etc/[x].conf")]  # a class holding "[" matches it literally
        assert paths("*.conf", hostname="node-2") == [("node-2", "/etc/a.conf")]  # case-sensitive
        assert paths("no-such-*") == []
        assert c.get("/files/search", params={"q": "*", "cursor": "nope"}).status_code == 400
        assert c.get("/files/search", params={"q": ""}).status_code == 422
        r = c.get("/files/search", params={"q": "*a" * 9})
        assert r.status_code == 400 and r.json() == {"detail": "A search pattern may hold at most 8 '*'"}


def test_recent_is_newest_first_across_ties_and_pages(backend_api: Api) -> None:
    with backend_api.http() as c:
        _put(c, "node-1", *[f"/batch/{i}" for i in range(5)])  # one batch: one updated_at for all
        _put(c, "node-1", "/later")
        items = [f for p in _all_pages(c, "/files/recent", limit=2) for f in p]
        assert items[0]["filepath"] == "/later"
        assert sorted(f["filepath"] for f in items[1:]) == [f"/batch/{i}" for i in range(5)]
        keys = [(f["updated_at"], f["_id"]) for f in items]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == 6
        for bad in ("nope", "1764000000000000-nope", "2026-01-01T00:00:00 " + "0" * 24, "1" * 18 + "-" + "0" * 24):
            r = c.get("/files/recent", params={"cursor": bad})
            assert r.status_code == 400 and r.json() == {"detail": "Invalid cursor"}


def test_nodes_current_record_and_whoami(backend_api: Api) -> None:
    with backend_api.http() as c:
        _put(c, "node-b", "/x", "/y")
        _put(c, "node-a", "/x")
        _put(c, "node-c", "/z")
        pages = _all_pages(c, "/nodes", limit=2)
        assert pages == [[{"hostname": "node-a"}, {"hostname": "node-b"}], [{"hostname": "node-c"}]]
        got = c.get("/files/current", params={"hostname": "node-b", "filepath": "/y"})
        assert got.status_code == 200 and got.json()["filepath"] == "/y"
        missing = c.get("/files/current", params={"hostname": "node-b", "filepath": "/z"})
        assert missing.status_code == 404 and missing.json() == {"detail": "No current record for /z on node-b"}
        assert c.get("/whoami").json() == {"name": "bootstrap admin", "scopes": ["admin"]}
    with backend_api.http(backend_api.new_key("write", "read")) as c:
        assert c.get("/whoami").json() == {"name": "test", "scopes": ["read", "write"]}


def test_a_key_limited_to_paths_lists_only_the_nodes_with_records_inside_them(backend_api: Api) -> None:
    with backend_api.http() as c:
        _put(c, "node-a", "/var/logs/other")  # /var/logs is not under /var/log
        _put(c, "node-b", "/var/log/app.log")
        _put(c, "node-c", "/etc/passwd")
        _put(c, "node-d", "/srv/exact")  # the prefix names a file itself
    key = backend_api.new_key("read", path_prefixes=["/var/log", "/srv/exact"])
    with httpx.Client(base_url=backend_api.url, headers={"X-API-Key": key}, timeout=30) as c:
        assert [n["hostname"] for n in c.get("/nodes").json()["items"]] == ["node-b", "node-d"]


def test_a_limited_key_browses_only_inside_its_limits(backend_api: Api) -> None:
    with backend_api.http() as c:
        _put(c, "node-1", "/var/log/app.log", "/var/lib/db", "/etc/passwd", "/var/log/x/y.log")
        _put(c, "node-2", "/var/log/app.log")
    key = backend_api.new_key("read", hostnames=["node-1"], path_prefixes=["/var/log"])
    with httpx.Client(base_url=backend_api.url, headers={"X-API-Key": key}, timeout=30) as c:
        assert [n["hostname"] for n in c.get("/nodes").json()["items"]] == ["node-1"]
        root = c.get("/files/tree", params={"hostname": "node-1", "dir": "/"}).json()["items"]
        assert [e["path"] for e in root] == ["/var/"]  # on the way to /var/log; /etc is not
        var = c.get("/files/tree", params={"hostname": "node-1", "dir": "/var/"}).json()["items"]
        assert [e["path"] for e in var] == ["/var/log/"]
        logs = c.get("/files/tree", params={"hostname": "node-1", "dir": "/var/log/"}).json()["items"]
        assert [(e["path"], e["kind"]) for e in logs] == [("/var/log/app.log", "file"), ("/var/log/x/", "dir")]
        assert c.get("/files/tree", params={"hostname": "node-2", "dir": "/"}).json()["items"] == []
        found = [(f["hostname"], f["filepath"]) for p in _all_pages(c, "/files/search", q="*") for f in p]
        assert sorted(found) == [("node-1", "/var/log/app.log"), ("node-1", "/var/log/x/y.log")]
        recent = [(f["hostname"], f["filepath"]) for p in _all_pages(c, "/files/recent") for f in p]
        assert sorted(recent) == sorted(found)
        inside = {"hostname": "node-1", "filepath": "/var/log/app.log"}
        assert c.get("/files/current", params=inside).status_code == 200
        refused = c.get("/files/current", params={"hostname": "node-1", "filepath": "/etc/passwd"})
        assert refused.status_code == 403 and "limited to" in refused.json()["detail"]
