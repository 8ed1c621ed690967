"""Generate the Grafana dashboards under ``putplace/files/dashboards/`` (Grafana >= 10 JSON).

Each panel is one line below: title, PromQL, unit, and the legend. The datasource is a
variable (``${datasource}``), as is the namespace. A panel that would show "No data" while
nothing went wrong (no 5xx yet, no 429 yet) adds ``or <the same by-labels> * 0``, so it shows 0.
``tests/chart/test_monitoring.py`` runs every query against a real Prometheus that scraped the
API, an agent and the operator during a workload, and checks that each returns data.

    .venv/bin/python charts/gen_dashboards.py           # rewrite the dashboards
    .venv/bin/python charts/gen_dashboards.py --check   # exit 1 if they are stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

OUT = Path(__file__).resolve().parent / "putplace" / "files" / "dashboards"
NS = 'namespace=~"$namespace"'
RATE = "[$__rate_interval]"


class Panel(NamedTuple):
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"


def quantiles(metric: str, by: str, where: str = NS) -> list[tuple[str, str]]:
    return [
        (f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({metric}_bucket{{{where}}}{RATE})))",
         f"p{int(q * 100)}{' {{' + by + '}}' if by else ''}")
        for q in (0.5, 0.95, 0.99)
    ]  # fmt: skip


def zero_if_none(expr: str, by: str, fallback: str) -> str:
    """``expr``, or 0 for each label set of ``fallback`` when ``expr`` has no series yet."""
    return f"({expr}) or (sum by ({by}) ({fallback}) * 0)"


REQUESTS = f"rate(putplace_http_requests_total{{{NS}}}{RATE})"
DEDUPLICATED = f"sum(rate(putplace_deduplicated_bytes_total{{{NS}}}{RATE}))"
DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "putplace-api": ("PutPlace / API", [
        Panel("Requests by route", [(f"sum by (route) ({REQUESTS})", "{{route}}")], "reqps"),
        Panel("5xx responses by route", [(zero_if_none(
            f'sum by (route) (rate(putplace_http_requests_total{{status=~"5..", {NS}}}{RATE}))', "route", REQUESTS),
            "{{route}}")], "reqps"),
        Panel("Latency", quantiles("putplace_http_request_duration_seconds", ""), "s"),
        Panel("Uploads by outcome", [(f"sum by (outcome) (rate(putplace_uploads_total{{{NS}}}{RATE}))",
                                      "{{outcome}}")], "ops"),
        Panel("Bytes uploaded and deduplicated", [
            (f"sum(rate(putplace_uploaded_bytes_total{{{NS}}}{RATE}))", "uploaded"),
            (f"sum(rate(putplace_deduplicated_bytes_total{{{NS}}}{RATE}))", "deduplicated"),
        ], "Bps"),
        Panel("Deduplicated share of announced bytes", [(
            f"{DEDUPLICATED} / clamp_min({DEDUPLICATED} + sum(rate(putplace_uploaded_bytes_total{{{NS}}}{RATE})), 1)",
            "deduplicated")], "percentunit"),
        Panel("Announced files needing an upload", [(
            f'sum(rate(putplace_files_announced_total{{upload_required="true", {NS}}}{RATE})) / clamp_min('
            f"sum(rate(putplace_files_announced_total{{{NS}}}{RATE})), 1e-9)", "upload required")], "percentunit"),
        Panel("Database and storage latency (p99)", [(
            "histogram_quantile(0.99, sum by (le, backend, operation) "
            f"(rate(putplace_backend_operation_duration_seconds_bucket{{{NS}}}{RATE})))", "{{backend}} {{operation}}")],
            "s"),
        Panel("429s by key id", [(zero_if_none(
            f"sum by (key_id) (rate(putplace_rate_limited_total{{{NS}}}{RATE}))", "job", REQUESTS), "{{key_id}}")],
            "reqps"),
        Panel("Shed at the database cap (503 + Retry-After), by operation", [(zero_if_none(
            f"sum by (operation) (rate(putplace_shed_total{{{NS}}}{RATE}))", "job", REQUESTS), "{{operation}}")],
            "ops"),
    ]),
    "putplace-agents": ("PutPlace / Agents", [
        Panel("Files synced by node", [
            (f"sum by (instance) (rate(putplace_agent_files_uploaded_total{{{NS}}}{RATE}))", "{{instance}} uploaded"),
            (f"sum by (instance) (rate(putplace_agent_files_skipped_total{{{NS}}}{RATE}))", "{{instance}} skipped"),
        ], "ops"),
        Panel("Bytes by node", [
            (f"sum by (instance) (rate(putplace_agent_bytes_uploaded_total{{{NS}}}{RATE}))", "{{instance}} uploaded"),
            (f"sum by (instance) (rate(putplace_agent_bytes_hashed_total{{{NS}}}{RATE}))", "{{instance}} hashed"),
        ], "Bps"),
        Panel("Time since the last completed scan", [(
            f"time() - max by (instance) (putplace_agent_last_scan_completed_timestamp_seconds{{{NS}}})",
            "{{instance}}")], "s"),
        Panel("Change to catalogue", quantiles("putplace_agent_change_to_catalogue_seconds", "instance"), "s"),
        Panel("Queue depth", [(f"sum by (instance, queue) (putplace_agent_queue_depth{{{NS}}})",
                               "{{instance}} {{queue}}")]),
        Panel("Errors by kind", [(zero_if_none(
            f"sum by (instance, kind) (rate(putplace_agent_errors_total{{{NS}}}{RATE}))", "instance",
            f"rate(putplace_agent_files_seen_total{{{NS}}}{RATE})"), "{{instance}} {{kind}}")], "ops"),
        Panel("Trees polled (watch limit hit)", [(
            f"sum by (instance) (putplace_agent_watch_polling{{{NS}}})", "{{instance}}")]),
    ]),
    "putplace-operator": ("PutPlace / Operator", [
        Panel("Reconciles by kind and result", [(
            f"sum by (kind, result) (rate(putplace_operator_reconciles_total{{{NS}}}{RATE}))",
            "{{kind}} {{result}}")], "ops"),
        Panel("Reconcile errors by reason", [(zero_if_none(
            f"sum by (kind, reason) (rate(putplace_operator_reconcile_errors_total{{{NS}}}{RATE}))", "kind",
            f"rate(putplace_operator_reconciles_total{{{NS}}}{RATE})"), "{{kind}} {{reason}}")], "ops"),
        Panel("Reconcile duration", quantiles("putplace_operator_reconcile_duration_seconds", "kind"), "s"),
        Panel("Objects by Ready", [(f"sum by (kind, ready) (putplace_operator_objects{{{NS}}})",
                                    "{{kind}} ready={{ready}}")]),
    ]),
}  # fmt: skip


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    built = []
    for n, p in enumerate(panels):
        built.append({
            "id": n + 1, "type": p.kind, "title": p.title, "datasource": datasource,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": datasource, "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(p.exprs)
            ],
        })  # fmt: skip
    return {
        "uid": uid, "title": title, "tags": ["putplace"], "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
            {"name": "namespace", "label": "Namespace", "type": "query", "datasource": datasource,
             "query": {"query": "label_values(up, namespace)", "refId": "namespaces"},
             "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": built,
    }  # fmt: skip


def render() -> dict[Path, str]:
    return {
        OUT / f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        for uid, (title, panels) in DASHBOARDS.items()
    }


def main() -> int:
    files = render()
    if "--check" in sys.argv[1:]:
        stale = [p.name for p, text in files.items() if not p.is_file() or p.read_text() != text]
        if stale:
            print(f"stale dashboards {', '.join(stale)}: run .venv/bin/python charts/gen_dashboards.py")
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
