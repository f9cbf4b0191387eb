"""Compression study table and plots: accuracy (and ||x - x*||^2) against uplink bytes.

    python scenarios/compression_sweep/table.py SWEEP_DIR [--budget BYTES] [--plot DIR]

One row per sweep point (the scenario `name` is the method's label, plus the step size
when several points share a name, as in the step-size searches), means over seeds:
rounds, final accuracy (and final rel_dist_to_opt when the problem has a known optimum),
total uplink and downlink MB, uplink and downlink bytes per client per round (the downlink
of the client-held-model methods includes round 1's full model), the uplink compression
ratio against the point named `fedavg_fp32`, and accuracy (rel_dist_to_opt) at a fixed
uplink budget: the last round whose cumulative uplink bytes are within the budget. The
budget defaults to the smallest total any point used. `--plot DIR` writes
accuracy_vs_uplink.png (and rel_dist_vs_uplink.png) there, cumulative uplink bytes on a
log axis, a line per point (mean over seeds, min-max band), the budget dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.results import read_metrics  # noqa: E402

REFERENCE = "fedavg_fp32"


def load(sweep: Path) -> list[tuple[str, list[list[dict]]]]:
    """(label, [metrics rows of each finished seed]) per point, in sweep order."""
    record = json.loads((sweep / "sweep.json").read_text())
    names = [s.get("name") for s in record["points"].values()]
    out = []
    for point, setting in sorted(record["points"].items(), key=lambda kv: int(kv[0])):
        label = setting.get("name", f"point {point}")
        if names.count(label) > 1:  # a step-size search: say which step
            label += f" ({step(setting.get('algorithm', {}))})"
        seeds = []
        for seed in record["config"]["seeds"]:
            run = sweep / "points" / f"{int(point):03d}" / f"seed{seed}"
            if (run / "summary.json").is_file():
                seeds.append(read_metrics(run))
        if seeds:
            out.append((label, seeds))
    return out


def step(alg: dict) -> str:
    """The step size(s) of an algorithm table: "client_lr=0.3", "server_lr=0.01 inv_sqrt"."""
    parts = [f"{k}={alg[k]:g}" for k in ("client_lr", "server_lr") if k in alg]
    if alg.get("schedule", "constant") != "constant":
        parts.append(alg["schedule"])
    return " ".join(parts)


def cumulative_up(rows: list[dict]) -> np.ndarray:
    return np.cumsum([r["bytes_up"] for r in rows], dtype=float)


def at_budget(rows: list[dict], metric: str, budget: float) -> float:
    """The metric at the last round whose cumulative uplink is within the budget (NaN: none)."""
    within = [r for r, b in zip(rows, cumulative_up(rows), strict=True) if b <= budget * (1 + 1e-9)]
    return within[-1][metric] if within else float("nan")


def per_client_round(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / sum(r["clients"] for r in rows)


def mean_std(values: list[float], fmt: str) -> str:
    v = np.asarray(values, dtype=float)
    if np.isnan(v).all():
        return "-"
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(np.nanmean(v), fmt)} ± {format(np.nanstd(v), fmt)}"


def table(points: list[tuple[str, list[list[dict]]]], budget: float) -> str:
    convex = "rel_dist_to_opt" in points[0][1][0][0]
    ref = next((s for label, s in points if label.split(" (")[0] == REFERENCE), None)
    ref_bytes = per_client_round(ref[0], "bytes_up") if ref else float("nan")
    head = ["method", "rounds", "final accuracy"]
    head += ["final rel. dist."] if convex else []
    head += ["uplink MB", "downlink MB", "up B/client/round", "down B/client/round"]
    head += ["uplink ratio vs fp32"]
    head += [f"accuracy at {budget / 1e6:.2f} MB up"]
    head += [f"rel. dist. at {budget / 1e6:.2f} MB up"] if convex else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, seeds in points:
        up = per_client_round(seeds[0], "bytes_up")
        final = mean_std([s[-1]["eval_accuracy"] for s in seeds], ".3f")
        cells = [label, str(len(seeds[0])), final]
        if convex:
            cells.append(mean_std([s[-1]["rel_dist_to_opt"] for s in seeds], ".2e"))
        cells += [
            f"{np.mean([cumulative_up(s)[-1] for s in seeds]) / 1e6:.2f}",
            f"{np.mean([sum(r['bytes_down'] for r in s) for s in seeds]) / 1e6:.2f}",
            f"{up:.0f}",
            f"{per_client_round(seeds[0], 'bytes_down'):.0f}",
            f"{ref_bytes / up:.1f}x",
            mean_std([at_budget(s, "eval_accuracy", budget) for s in seeds], ".3f"),
        ]
        if convex:
            cells.append(mean_std([at_budget(s, "rel_dist_to_opt", budget) for s in seeds], ".2e"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: list[tuple[str, list[list[dict]]]], metric: str, budget: float, path: Path):
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for label, seeds in points:
        n = min(len(s) for s in seeds)
        x = cumulative_up(seeds[0][:n])
        ys = np.array([[r[metric] for r in s[:n]] for s in seeds], dtype=float)
        (line,) = ax.plot(x, ys.mean(0), label=label, lw=1.2)
        if len(seeds) > 1:
            ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    ax.axvline(budget, color="grey", ls="--", lw=1, label=f"budget {budget / 1e6:.2f} MB")
    ax.set_xscale("log")
    if metric == "rel_dist_to_opt":
        ax.set_yscale("log")
        ax.set_ylabel("||x - x*||^2 / ||x0 - x*||^2")
    else:
        ax.set_ylabel("test accuracy")
        values = [r[metric] for _, seeds in points for s in seeds for r in s]
        ax.set_ylim(bottom=max(0.0, float(np.percentile(values, 5)) - 0.05))
    ax.set_xlabel("cumulative uplink bytes (all clients)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--budget", type=float, help="uplink bytes (default: the smallest total)")
    ap.add_argument("--plot", type=Path, help="directory for the PNGs")
    args = ap.parse_args()
    points = load(args.sweep)
    totals = [np.mean([cumulative_up(s)[-1] for s in seeds]) for _, seeds in points]
    budget = args.budget or min(totals)
    print(table(points, budget))
    if args.plot:
        args.plot.mkdir(parents=True, exist_ok=True)
        plot(points, "eval_accuracy", budget, args.plot / "accuracy_vs_uplink.png")
        if "rel_dist_to_opt" in points[0][1][0][0]:
            plot(points, "rel_dist_to_opt", budget, args.plot / "rel_dist_vs_uplink.png")


if __name__ == "__main__":
    main()
