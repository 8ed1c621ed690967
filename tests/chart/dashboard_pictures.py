"""Pictures of the chart's Grafana dashboards, drawn from a real Prometheus -- and NOT by Grafana.

No Grafana can be had here: its source is under the AGPL, which this workplace rules out, and
Debian packages none. So each panel's PromQL is asked of the real Prometheus the monitoring test
runs (``query_range`` over the test's workload), drawn with matplotlib where the panel's
``gridPos`` puts it on Grafana's 24-column grid, under the panel's title, with its legend format
and unit, and every picture says in its title that it is not Grafana.

``tests/chart/test_monitoring.py`` draws them on every run (a panel without data fails it); with
``PUTPLACE_DASHBOARD_PICTURES=docs/dashboards`` it writes the README's pictures.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter, Formatter, PercentFormatter  # noqa: E402

__all__ = ["PICTURES_ENV", "Series", "draw_dashboards", "filled"]

PICTURES_ENV = "PUTPLACE_DASHBOARD_PICTURES"
GRID_COLUMNS = 24
INCH_PER_COLUMN = 0.75
INCH_PER_ROW = 0.42  # one gridPos unit of height is 30 px in Grafana, a column ~ 55 px on a wide screen
HEADER_ROWS = 3  # room above the panels for the picture's title
LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Series:
    legend: str
    times: list[float]  # seconds since the start of the window
    values: list[float]


def _formatter(unit: str | None) -> Formatter:
    """Grafana's unit ids used by the chart's panels, as axis labels."""
    if unit == "percentunit":
        return PercentFormatter(1.0)
    suffix = {"s": "s", "Bps": "B/s", "ops": "ops/s", "reqps": "req/s"}.get(unit or "", "")
    return EngFormatter(unit=suffix, sep=" " if suffix else "")


def _legend(template: str, labels: dict[str, str]) -> str:
    text = LABEL.sub(lambda m: labels.get(m.group(1), ""), template or "").strip()
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    r = httpx.get(
        prometheus + "/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    ).json()
    if r.get("status") != "success":
        raise AssertionError(f"query_range {expr!r}: {r}")
    return list(r["data"]["result"])


def filled(expr: str, fill: dict[str, str]) -> str:
    """A panel's PromQL with Grafana's variables replaced as ``fill`` says."""
    for variable, value in fill.items():
        expr = expr.replace(variable, value)
    return expr


def panel_series(
    prometheus: str, panel: dict[str, Any], start: float, end: float, step: float, fill: dict[str, str]
) -> list[Series]:
    out = []
    for target in panel["targets"]:
        for result in query_range(prometheus, filled(target["expr"], fill), start, end, step):
            points = [(float(t) - start, float(v)) for t, v in result["values"] if math.isfinite(float(v))]
            if points:
                times, values = zip(*points, strict=True)
                out.append(Series(_legend(target.get("legendFormat", ""), result["metric"]), list(times), list(values)))
    return out


def _draw_panel(ax: Axes, panel: dict[str, Any], series: list[Series]) -> None:
    ax.set_title(panel["title"], fontsize=9, loc="left")
    for s in series:
        ax.plot(s.times, s.values, label=s.legend, linewidth=1.2, marker="." if len(s.times) < 4 else None)
    if all(v == 0 for s in series for v in s.values):
        ax.set_ylim(0, 1)  # a quiet panel (no errors, say) as Grafana shows it: a line at the bottom
    ax.yaxis.set_major_formatter(_formatter(panel.get("fieldConfig", {}).get("defaults", {}).get("unit")))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", ncols=2 if len(series) > 4 else 1)


def _place(figure: Figure, pos: dict[str, int], rows: int) -> Axes:
    """An axes where Grafana's gridPos puts the panel, leaving room for its title and tick labels."""
    left, right, top, bottom = 1.1, 0.3, 0.9, 0.7  # margins inside the panel's cell, in grid units
    width, height = GRID_COLUMNS, rows + HEADER_ROWS
    return figure.add_axes(
        (
            (pos["x"] + left) / width,
            1 - (HEADER_ROWS + pos["y"] + pos["h"] - bottom) / height,
            (pos["w"] - left - right) / width,
            (pos["h"] - top - bottom) / height,
        )
    )


def draw_dashboards(
    dashboards: list[Path], prometheus: str, start: float, end: float, out_dir: Path, fill: dict[str, str]
) -> dict[Path, list[str]]:
    """Draw each dashboard to ``out_dir/<name>.png``; return each picture's panels without data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    step = max(1.0, (end - start) / 200)
    empty: dict[Path, list[str]] = {}
    for path in dashboards:
        board = json.loads(path.read_text())
        panels = board["panels"]
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        figure = plt.figure(figsize=(GRID_COLUMNS * INCH_PER_COLUMN, (rows + HEADER_ROWS) * INCH_PER_ROW), dpi=80)
        picture = out_dir / f"{path.stem}.png"
        empty[picture] = []
        for panel in panels:
            ax = _place(figure, panel["gridPos"], rows)
            series = panel_series(prometheus, panel, start, end, step, fill)
            if not series:
                empty[picture].append(panel["title"])
            _draw_panel(ax, panel, series)
        figure.suptitle(
            f"{board['title']}: each panel's query on a real Prometheus, drawn with matplotlib (not Grafana)\n"
            f"x: seconds into the test's workload",
            fontsize=11,
        )
        figure.savefig(picture)
        plt.close(figure)
    return empty
