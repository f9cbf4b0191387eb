"""Sweep results: sweep.csv (a row per point and seed), means over seeds, and report.md.

`fedsim report SWEEP_DIR` writes them from the run directories, so it can be rerun at
any time, also on a sweep that is still running or had failures.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.plots import AXES  # noqa: E402
from fedsim.results import (  # noqa: E402
    ERROR,  # noqa: E402
    METRICS,
    SUMMARY,
    read_metrics,
)
from fedsim.sweeps import SWEEP_RECORD, point_dir  # noqa: E402

FINAL = ("eval_accuracy", "eval_loss", "train_loss", "dist_to_opt", "rel_dist_to_opt")
TOTALS = ("total_bytes_up", "total_bytes_down", "total_grad_evals", "sim_time_s", "wall_s")
CURVES = ("eval_accuracy", "train_loss", "rel_dist_to_opt")


def reached(rows: list[dict[str, Any]], target: dict[str, Any] | None) -> tuple[Any, Any]:
    """(round, simulated time) at which the target metric is first reached, or blanks."""
    if not target:
        return "", ""
    sign = 1 if target.get("mode", "max") == "max" else -1
    for r in rows:
        v = r.get(target["metric"])
        if v is not None and sign * (v - target["value"]) >= 0:
            return r["round"], r["sim_time_s"]
    return "", ""


def axis_keys(record: dict[str, Any]) -> list[str]:
    return sorted({k for s in record["points"].values() for k in s})


def collect(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep record and one row per (point, seed) run directory."""
    record = json.loads((sweep_dir / SWEEP_RECORD).read_text())
    keys = axis_keys(record)
    rows = []
    for point, setting in sorted(record["points"].items(), key=lambda kv: int(kv[0])):
        for seed in record["config"]["seeds"]:
            run = point_dir(sweep_dir, point, seed)
            row: dict[str, Any] = {"point": int(point), "seed": seed}
            row |= {k: setting.get(k, "") for k in keys}
            if (run / SUMMARY).is_file():
                summary = json.loads((run / SUMMARY).read_text())
                row["status"] = "ok"
                row |= {f"final_{m}": summary["final"].get(m, "") for m in FINAL}
                row["best_eval_accuracy"] = summary.get("best_eval_accuracy", "")
                row["rounds"] = summary["rounds"]
                row |= {t: summary[t] for t in TOTALS}
                row["rounds_to_target"], row["sim_time_to_target"] = reached(
                    read_metrics(run), record["config"].get("target")
                )
            elif (run / ERROR).is_file():
                row["status"] = "failed: " + (run / ERROR).read_text().strip().splitlines()[-1]
            else:
                row["status"] = "pending"
            rows.append(row)
    return record, rows


RESULT_COLUMNS = (
    *(f"final_{m}" for m in FINAL),
    "best_eval_accuracy",
    "rounds",
    *TOTALS,
    "rounds_to_target",
    "sim_time_to_target",
)


def means(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Per point: its axis values, and mean and std over its completed seeds of each result."""
    out = []
    for point in sorted({r["point"] for r in rows}):
        mine = [r for r in rows if r["point"] == point]
        done = [r for r in mine if r["status"] == "ok"]
        row = {"point": point, **{k: mine[0][k] for k in keys}}
        row["seeds_ok"] = f"{len(done)}/{len(mine)}"
        for col in RESULT_COLUMNS:
            vals = [r[col] for r in done if isinstance(r.get(col), int | float)]
            row[f"{col}_mean"] = float(np.mean(vals)) if vals else ""
            row[f"{col}_std"] = float(np.std(vals)) if vals else ""
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def point_runs(
    sweep_dir: Path, record: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[str, list[list[dict[str, Any]]]]:
    """Each point's label -> the metric rows of its completed seeds."""
    labels = {
        int(p): ", ".join(f"{k}={v}" for k, v in s.items()) or "base"
        for p, s in record["points"].items()
    }
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for r in rows:
        run = point_dir(sweep_dir, r["point"], r["seed"])
        if r["status"] == "ok" and (run / METRICS).is_file():
            runs.setdefault(labels[r["point"]], []).append(read_metrics(run))
    return runs


def series(seeds: list[list[dict[str, Any]]], metric: str, key: str) -> tuple[np.ndarray, ...]:
    """Over the rounds every seed has: x (the seeds' mean; bytes_up cumulative) and the
    metric's mean, min and max over seeds."""
    n = min(len(m) for m in seeds)
    ys = np.array([[r.get(metric, np.nan) for r in m[:n]] for m in seeds], dtype=float)
    xs = np.array([[r.get(key, np.nan) for r in m[:n]] for m in seeds], dtype=float)
    x = (xs.cumsum(axis=1) if key == "bytes_up" else xs).mean(0)
    return x, ys.mean(0), ys.min(0), ys.max(0)


def plot_curves(sweep_dir: Path, record: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One PNG per metric: a line per point (mean over seeds) with a min-max seed band."""
    (sweep_dir / "plots").mkdir(exist_ok=True)
    runs = point_runs(sweep_dir, record, rows)
    written = []
    for metric in CURVES:
        if not any(metric in m[0] for seeds in runs.values() for m in seeds):
            continue
        fig, axes = plt.subplots(
            1, len(AXES), figsize=(5 * len(AXES), 3.4 + 0.25 * len(runs)), layout="constrained"
        )
        for label, seeds in runs.items():
            for ax, (key, name) in zip(axes, AXES, strict=True):
                x, mean, low, high = series(seeds, metric, key)
                (line,) = ax.plot(x, mean, label=label)
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
                ax.set_xlabel(name)
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
                if metric == "rel_dist_to_opt":
                    ax.set_yscale("log")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", fontsize=8)
        fig.savefig(sweep_dir / "plots" / f"{metric}.png", dpi=90)
        plt.close(fig)
        written.append(f"plots/{metric}.png")
    return written


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_report(sweep_dir: Path | str, command: str = "") -> Path:
    """sweep.csv, sweep_mean.csv and report.md (tables and plots) for a sweep directory."""
    sweep_dir = Path(sweep_dir)
    record, rows = collect(sweep_dir)
    write_csv(sweep_dir / "sweep.csv", rows)
    keys = axis_keys(record)
    mean_rows = means(rows, keys)
    write_csv(sweep_dir / "sweep_mean.csv", mean_rows)
    cfg = record["config"]
    shown = [
        c
        for c in (
            "final_eval_accuracy",
            "best_eval_accuracy",
            "final_dist_to_opt",
            "total_bytes_up",
            "sim_time_s",
            "rounds_to_target",
            "sim_time_to_target",
        )
        if any(m[f"{c}_mean"] != "" for m in mean_rows)
    ]
    lines = [f"# Sweep `{cfg['name']}`", ""]
    if command:
        lines += ["Made by:", "", f"    {command}", ""]
    lines += [f"Base scenario `{cfg['base']}`, seeds {cfg['seeds']}."]
    if cfg.get("target"):
        t = cfg["target"]
        lines += [
            f"Target: {t['metric']} {'>=' if t.get('mode', 'max') == 'max' else '<='} {t['value']}."
        ]
    lines += ["", "Mean (std) over seeds:", ""]
    lines.append("| " + " | ".join(["point", *keys, "seeds", *shown]) + " |")
    lines.append("|" + "---|" * (2 + len(keys) + len(shown)))
    for m in mean_rows:
        cells = [str(m["point"]), *(fmt(m[k]) for k in keys), m["seeds_ok"]]
        cells += [
            f"{fmt(m[c + '_mean'])} ({fmt(m[c + '_std'])})" if m[c + "_mean"] != "" else "-"
            for c in shown
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- point {r['point']} seed {r['seed']}: {r['status'][8:]}" for r in failed]
    lines += ["", "Per-run values: `sweep.csv`; means and stds: `sweep_mean.csv`.", ""]
    for png in plot_curves(sweep_dir, record, rows):
        lines += [f"![{png}]({png})", ""]
    path = sweep_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
