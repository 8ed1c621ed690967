"""The chart's alerts and dashboards against a real Prometheus (Debian's 2.42) that scraped a real
API, a real agent and the real operator during a short workload: the rules pass promtool and
evaluate without error, every metric they and the dashboards name is really exported, and every
dashboard query returns data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]

from tests.agent.conftest import Agent
from tests.api.conftest import ADMIN_KEY
from tests.chart.conftest import CHART, find, render
from tests.chart.dashboard_pictures import PICTURES_ENV, draw_dashboards, filled
from tests.operator.conftest import OperatorProcess, admin_secret, condition
from tests.overload import write_holding_the_only_slot
from tests.processes import ApiProcess
from tests.servers import KubeCluster
from tests.servers.prometheus import Target, promtool, run
from tests.waiting import wait_until

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
# Grafana's variables as the test fills them: 30 s stands for $__rate_interval, every namespace.
FILL = {"$__rate_interval": "30s", "$namespace": ".*"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) of every target of every dashboard, variables filled in."""
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((path.stem, panel["title"], filled(target["expr"], FILL)))
    return out


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert r["status"] == "success", (expr, r)
    return list(r["data"]["result"])


def workload(api: ApiProcess, tree: Path) -> None:
    """What makes every panel move, spread over several scrapes (a counter born with its first
    jump shows no increase()): files for the agent in three waves, the later two repeating the
    first one's contents (deduplicated), a key that keeps hitting its rate limit, and uploads
    whose bytes do not match what was announced."""
    with api.http() as admin:
        noisy = admin.post("/api_keys", json={"name": "noisy", "scopes": ["read"], "rate_limit": 1,
                                              "rate_limit_burst": 1}).json()["api_key"]  # fmt: skip
        for tick in range(12):
            if tick % 4 == 0:
                for n in range(10):
                    (tree / f"wave{tick // 4}-{n}.txt").write_text(f"content {n}\n" * (n + 1))
            if tick % 6 == 0:
                mismatch(admin, f"/announced-{tick}")
            httpx.get(api.url + "/files", headers={"X-API-Key": noisy}, timeout=5)
            time.sleep(0.5)


def shed_once(api: ApiProcess, path: str) -> None:
    """One request refused at the cap (``putplace_shed_total``): ``api`` runs one database
    operation at a time, and a write of ``path`` holds it, waiting on a lock this test takes on
    the SQLite file; a read meanwhile is shed."""
    with write_holding_the_only_slot(api.workdir / "data" / "putplace.db", api.http, file_meta(path, 9)) as answers:
        pass  # the probe inside was shed
    assert answers[-1].status_code == 201, [r.status_code for r in answers]


def file_meta(path: str, size: int) -> dict[str, Any]:
    sha = hashlib.sha256(path.encode()).hexdigest()
    return {"filepath": path, "hostname": "h", "ip_address": "127.0.0.1", "sha256": sha, "file_size": size,
            "file_mode": 33188, "file_uid": 0, "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0,
            "file_ctime": 1.0}  # fmt: skip


def mismatch(admin: httpx.Client, path: str) -> None:
    meta = file_meta(path, 9)
    assert admin.post("/put_file", json=meta).status_code == 201
    refused = admin.post(
        f"/upload_file/{meta['sha256']}", content=b"different", headers={"Content-Type": "application/octet-stream"}
    )
    assert refused.status_code == 400


def test_alerts_and_dashboards_against_real_scraped_data(
    helm: Path, crds: KubeCluster, api_process: ApiProcess, tmp_path: Path
) -> None:
    api = api_process
    # The alerts as the chart renders them (thresholds filled in).
    (rule,) = find(render(helm, "metrics.prometheusRule.force=true"), "PrometheusRule")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    checked = subprocess.run([str(promtool()), "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 10 rules found" in checked.stdout, checked.stdout + checked.stderr

    # An agent syncing a tree, and the operator reconciling an instance and a key at this API.
    tree = tmp_path / "tree"
    tree.mkdir()
    agent = Agent(api, tree, tmp_path, key=api.new_key("write"))
    agent.start()
    ns = f"mon-{uuid.uuid4().hex[:6]}"
    operator = OperatorProcess(
        crds.kubeconfig, tmp_path, env={"PUTPLACE_OPERATOR_API_URL_TEMPLATE": api.url,
                                        "PUTPLACE_OPERATOR_RECONCILE_SECONDS": "1"},
    )  # fmt: skip
    operator.start()
    # A second API that runs one database operation at a time, to be seen shedding load.
    capped = ApiProcess(
        tmp_path / "capped", env={"PUTPLACE_DATABASE_MAX_CONCURRENCY": "1", "PUTPLACE_DATABASE_TIMEOUT_SECONDS": "60"}
    )
    capped.workdir.mkdir()
    capped.start()
    prometheus = None
    try:
        crds.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        crds.apply(
            admin_secret("pp", ns, ADMIN_KEY),
            {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance", "metadata": {"name": "pp"},
             "spec": {"agent": {"enabled": False}}},
            {"apiVersion": "putplace.io/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k"},
             "spec": {"instanceRef": {"name": "pp"}, "scopes": ["read"]}},
            namespace=ns,
        )  # fmt: skip
        metrics_key = api.new_key("metrics")
        targets = [
            Target("putplace-api", api.url.removeprefix("http://"), bearer=metrics_key),
            Target("putplace-api-capped", capped.url.removeprefix("http://"), bearer=capped.new_key("metrics")),
            Target("putplace-agent", f"127.0.0.1:{agent.metrics_port}"),
            Target("putplace-operator", operator.metrics_url.removeprefix("http://").removesuffix("/metrics")),
        ]
        (tmp_path / "prom").mkdir()
        prometheus, url = run(tmp_path / "prom", targets, [rules])
        started = time.time()
        wait_until(lambda: len([s for s in query(url, "up == 1")]) == 4, 30, "all four targets up")
        wait_until(
            lambda: condition(crds.get("apikey", "k", "-n", ns), "Ready") == ("True", "KeyIssued"), 30, "the key Ready"
        )
        shed_once(capped, "/shed-before")
        workload(api, tree)
        shed_once(capped, "/shed-after")  # a few scrapes later: the counter moves in rate()
        time.sleep(6)  # a few scrapes after the workload, so every rate() has two samples that differ

        # Every metric named by an alert or a panel is one the components really export.
        exported = set(httpx.get(url + "/api/v1/label/__name__/values", timeout=10).json()["data"])
        texts = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]] + [q for *_, q in dashboard_queries()]
        named = {m for text in texts for m in re.findall(r"\bputplace_[a-z_]+", text)}
        assert named - exported == set(), f"not exported: {sorted(named - exported)}"

        # Every panel shows data.
        empty = [(board, panel, expr) for board, panel, expr in dashboard_queries() if not query(url, expr)]
        assert empty == [], "panels without data:\n" + "\n".join(map(str, empty))
        # ... and over time: each dashboard drawn from query_range (not by Grafana: see dashboard_pictures).
        pictures = Path(os.environ.get(PICTURES_ENV) or tmp_path / "pictures")
        drawn = draw_dashboards(DASHBOARDS, url, started, time.time(), pictures, FILL)
        assert drawn == {pictures / f"{d.stem}.png": [] for d in DASHBOARDS}, "panels drawn without data"
        assert all(picture.stat().st_size > 20_000 for picture in drawn), "a picture with nothing on it"

        # Every alert evaluates without error.
        def evaluated() -> list[dict[str, Any]] | None:
            groups = httpx.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
            found = [r for g in groups for r in g["rules"]]
            return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else None

        found = wait_until(evaluated, 20, "the rules evaluated")
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in found] == [
            (r["alert"], "ok", "") for g in rule["spec"]["groups"] for r in g["rules"]
        ]
        # The noisy key's 429s are seen, per key id.
        assert query(url, "sum by (key_id) (increase(putplace_rate_limited_total[5m])) > 0")
    finally:
        if prometheus is not None:
            prometheus.stop()
        capped.stop()
        agent.stop()
        # The user-made key's finalizer is released while the operator still runs.
        crds.kubectl("delete", "namespace", ns, "--timeout=60s", check=False)
        operator.stop()
    operator.check_log()
