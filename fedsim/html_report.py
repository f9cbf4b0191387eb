"""`fedsim report DIR --html`: one self-contained page for a run or a sweep.

The page carries plotly.js inline (no network needed to open it): the scenario, the final
table, an interactive plot of every metric against rounds, simulated time and cumulative
uplink bytes (a sweep's points as seed means with min-max bands), the per-client table
(a run) or per-run table (a sweep), and the privacy block of a private run. Every number
in a table carries its exact value in `data-value`, so a reader (or a test) can check it
against summary.json.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import DEFAULT_PLOTLY_COLORS
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from fedsim.plots import AXES
from fedsim.report import RESULT_COLUMNS, axis_keys, collect, means, point_runs, series
from fedsim.results import CLIENTS, CONFIG, METRICS, SUMMARY, read_rows
from fedsim.sweeps import SWEEP_RECORD
from fedsim.tracking import flatten

PAGE = "report.html"
X_KEYS = {key for key, _ in AXES}
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
pre { background: #f8f8f8; padding: 1em; overflow-x: auto; }
.meta { color: #555; } .plot { margin: 1em 0; } .wide { overflow-x: auto; }
"""


def write_html(path: Path | str) -> Path:
    """Write DIR/report.html for a sweep directory or a run directory."""
    path = Path(path)
    body = sweep_body(path) if (path / SWEEP_RECORD).is_file() else run_body(path)
    title, sections = body
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    out = path / PAGE
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------- a run


def run_body(run_dir: Path) -> tuple[str, list[str]]:
    summary = json.loads((run_dir / SUMMARY).read_text())
    rows = read_rows(run_dir / METRICS)
    config = (run_dir / CONFIG).read_text()
    final = {f"final.{k}": v for k, v in summary["final"].items()}
    totals = {k: v for k, v in summary.items() if k not in ("final", "privacy")}
    sections = [
        meta_line(summary.get("runtime", ""), len(rows)),
        "<h2>Final</h2>",
        key_value_table("final", {**final, **totals}),
    ]
    privacy = summary.get("privacy", {})
    if privacy.get("mechanism", "none") != "none":
        sections += ["<h2>Privacy</h2>", key_value_table("privacy", flatten(privacy))]
    sections.append("<h2>Metrics</h2>")
    for metric in metric_names(rows):
        sections.append(plot_html(metric, {"run": [rows]}))
    clients = read_rows(run_dir / CLIENTS)
    if clients:
        sections += ["<h2>Clients</h2>", client_table(clients)]
    sections += ["<h2>Scenario</h2>", f"<pre id='scenario'>{html.escape(config)}</pre>"]
    return f"fedsim run: {summary.get('scenario', run_dir.name)}", sections


def client_table(rows: list[dict[str, Any]]) -> str:
    """Per client over the run: rounds invited, each fate, grad evals, work, time."""
    by: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["partition"]].append(r)
    fates = sorted({r.get("fate", "") for r in rows})
    table = []
    for pid in sorted(by):
        mine = by[pid]
        counts = Counter(r.get("fate", "") for r in mine)
        table.append(
            {
                "client": pid,
                "rounds": len(mine),
                **{f"fate: {f}": counts[f] for f in fates},
                "grad_evals": sum(r.get("grad_evals", 0) for r in mine),
                "work": sum(r.get("work", 0) for r in mine),
                "time_s": sum(r.get("time_s", 0.0) for r in mine),
            }
        )
    return grid_table("clients", table)


# ---------------------------------------------------------------- a sweep


def sweep_body(sweep_dir: Path) -> tuple[str, list[str]]:
    record, rows = collect(sweep_dir)
    cfg, keys = record["config"], axis_keys(record)
    mean_rows = means(rows, keys)
    shown = [c for c in RESULT_COLUMNS if any(m[f"{c}_mean"] != "" for m in mean_rows)]
    table = [
        {
            "point": m["point"],
            **{k: m[k] for k in keys},
            "seeds": m["seeds_ok"],
            **{f"{c} mean": m[f"{c}_mean"] for c in shown},
            **{f"{c} std": m[f"{c}_std"] for c in shown},
        }
        for m in mean_rows
    ]
    runs = point_runs(sweep_dir, record, rows)
    every = [m for seeds in runs.values() for m in seeds]
    sections = [
        f"<p class='meta'>base scenario <code>{html.escape(str(cfg['base']))}</code>, seeds "
        f"{html.escape(str(cfg['seeds']))}, {len(mean_rows)} points; written "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>",
        "<h2>Mean over seeds</h2>",
        grid_table("means", table),
        "<h2>Metrics</h2>",
        *(plot_html(metric, runs) for metric in metric_names(*every)),
        "<h2>Runs</h2>",
        grid_table("runs", rows),
        "<h2>Sweep</h2>",
        f"<pre id='scenario'>{html.escape(json.dumps(cfg, indent=1))}</pre>",
    ]
    return f"fedsim sweep: {cfg['name']}", sections


# ---------------------------------------------------------------- pieces


def meta_line(runtime: str, rounds: int) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"<p class='meta'>runtime {html.escape(runtime)}, {rounds} rounds; written {when} UTC</p>"
    )


def metric_names(*runs: list[dict[str, Any]]) -> list[str]:
    """Numeric metrics present in the rows, in first-seen order (not the x axes)."""
    names: dict[str, None] = {}
    for rows in runs:
        for r in rows:
            for k, v in r.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in X_KEYS:
                    names[k] = None
    return list(names)


def plot_html(metric: str, runs: dict[str, list[list[dict[str, Any]]]]) -> str:
    """One figure per metric: panels against each x axis; a line per series (the mean over
    its runs), with a min-max band when it has several."""
    fig = make_subplots(rows=1, cols=len(AXES), subplot_titles=[name for _, name in AXES])
    for i, (label, seeds) in enumerate(runs.items()):
        if not any(metric in r for m in seeds for r in m):
            continue
        color = DEFAULT_PLOTLY_COLORS[i % len(DEFAULT_PLOTLY_COLORS)]
        for col, (key, _) in enumerate(AXES, start=1):
            x, mean, low, high = series(seeds, metric, key)
            if len(seeds) > 1:
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([x, x[::-1]]),
                        y=np.concatenate([high, low[::-1]]),
                        fill="toself",
                        fillcolor=color.replace("rgb", "rgba").replace(")", ",0.15)"),
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                        legendgroup=label,
                    ),
                    row=1,
                    col=col,
                )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=mean,
                    mode="lines",
                    name=label,
                    line={"color": color},
                    legendgroup=label,
                    showlegend=col == 1 and len(runs) > 1,
                ),
                row=1,
                col=col,
            )
    fig.update_layout(
        title=metric, height=330, margin={"t": 60, "b": 40}, legend={"orientation": "h"}
    )
    if metric in ("rel_dist_to_opt", "dist_to_opt"):
        fig.update_yaxes(type="log")
    div = pio.to_html(
        fig,
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{metric}",
        config={"displaylogo": False, "responsive": True},
    )
    return f"<div class='plot'>{div}</div>"


def cell(value: Any, key: str = "") -> str:
    """A table cell; a number shows 6 significant digits and keeps its exact value."""
    attr = f" data-key='{html.escape(key)}'" if key else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = "—" if value is None else json.dumps(value) if isinstance(value, list) else value
        return f"<td class='text'{attr}>{html.escape(str(text))}</td>"
    shown = f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"<td{attr} data-value='{value!r}'>{shown}</td>"


def key_value_table(table_id: str, values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th class='text'>{html.escape(k)}</th>{cell(v, k)}</tr>" for k, v in values.items()
    )
    return f"<table id='{table_id}'>{rows}</table>"


def grid_table(table_id: str, rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(cell(r.get(c, ""), c) for c in cols) + "</tr>" for r in rows)
    return (
        f"<div class='wide'><table id='{table_id}'><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )
