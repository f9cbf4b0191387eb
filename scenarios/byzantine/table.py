"""Byzantine study tables and plot: final accuracy per method and share of sign flippers.

    python scenarios/byzantine/table.py SWEEP_DIR [SWEEP_DIR ...] [--plot PNG]

Per sweep: rows are methods (the scenario `name`), columns the adversary fractions; cells
are the final test accuracy, mean ± std over seeds. Then, per method, the change from its
clean run at each fraction (points of accuracy, negative: worse) and whether the claim
"within 5 points of the clean run at 30%" holds. `--plot` draws final accuracy against the
fraction (mean, error bars one std), one panel per sweep; `--curves` test accuracy against
the round, a row of panels per sweep, one panel per method, a line per fraction (mean over
seeds, min-max band).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fedsim.results import read_metrics  # noqa: E402

FRACTION = "system.adversaries.fraction"
CLAIM_FRACTION, CLAIM_POINTS = 0.3, 0.05


def curves(sweep: Path) -> dict[str, dict[float, np.ndarray]]:
    """{method: {fraction: accuracy per (seed, round)}} of the finished runs."""
    record = json.loads((sweep / "sweep.json").read_text())
    out: dict[str, dict[float, np.ndarray]] = {}
    for point, setting in sorted(record["points"].items(), key=lambda kv: int(kv[0])):
        runs = [
            sweep / "points" / f"{int(point):03d}" / f"seed{s}" for s in record["config"]["seeds"]
        ]
        accs = [
            [r["eval_accuracy"] for r in read_metrics(run)]
            for run in runs
            if (run / "summary.json").is_file()
        ]
        if accs:
            n = min(map(len, accs))
            out.setdefault(setting["name"], {})[float(setting[FRACTION])] = np.array(
                [a[:n] for a in accs]
            )
    return out


def plot_curves(sweeps: list[Path], names: list[str], path: Path) -> None:
    data = [curves(s) for s in sweeps]
    methods = list(dict.fromkeys(m for d in data for m in d))
    fig, axes = plt.subplots(
        len(sweeps),
        len(methods),
        figsize=(3.6 * len(methods), 3.0 * len(sweeps)),
        layout="constrained",
        squeeze=False,
        sharey=True,
    )
    for row, (name, d) in enumerate(zip(names, data, strict=True)):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            for fraction, acc in sorted(d.get(method, {}).items()):
                x = np.arange(1, acc.shape[1] + 1)
                (line,) = ax.plot(x, acc.mean(0), lw=1, label=f"{fraction:.0%}")
                ax.fill_between(x, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15)
            ax.set_title(f"{name}: {method}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("test accuracy")
    axes[0][0].legend(title="sign flippers", fontsize=8)
    fig.savefig(path, dpi=75)
    plt.close(fig)


def load(sweep: Path) -> tuple[str, dict[str, dict[float, list[float]]], int]:
    """The sweep's name, {method: {fraction: [final accuracy of each finished seed]}}, and
    the client count."""
    record = json.loads((sweep / "sweep.json").read_text())
    out: dict[str, dict[float, list[float]]] = {}
    clients = 0
    for point, setting in sorted(record["points"].items(), key=lambda kv: int(kv[0])):
        accs = out.setdefault(setting["name"], {}).setdefault(float(setting[FRACTION]), [])
        for seed in record["config"]["seeds"]:
            run = sweep / "points" / f"{int(point):03d}" / f"seed{seed}"
            if (run / "summary.json").is_file():
                accs.append(read_metrics(run)[-1]["eval_accuracy"])
                config = tomllib.loads((run / "config.toml").read_text())
                clients = config["data"]["num_clients"]
    return record["config"]["name"], out, clients


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" + (
        f" ({len(values)})" if len(values) < 3 else ""
    )


def tables(results: dict[str, dict[float, list[float]]], clients: int) -> str:
    fractions = sorted({f for per in results.values() for f in per})
    head = ["method"] + [f"{f:.0%} ({round(f * clients)} of {clients})" for f in fractions]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, per in results.items():
        lines.append("| " + " | ".join([method] + [cell(per.get(f, [])) for f in fractions]) + " |")
    lines += ["", "Change from the clean run (points of accuracy, mean over seeds):", ""]
    head = ["method"] + [f"{f:.0%}" for f in fractions if f > 0]
    head += [f"within {CLAIM_POINTS * 100:.0f} points at {CLAIM_FRACTION:.0%}?"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, per in results.items():
        clean = np.mean(per[0.0]) if per.get(0.0) else float("nan")
        change = {f: np.mean(v) - clean for f, v in per.items() if f > 0 and v}
        cells = [f"{change[f] * 100:+.1f}" if f in change else "-" for f in fractions if f > 0]
        claim = change.get(CLAIM_FRACTION)
        verdict = (
            "-" if claim is None or np.isnan(claim) else "yes" if -claim <= CLAIM_POINTS else "no"
        )
        lines.append("| " + " | ".join([method, *cells, verdict]) + " |")
    return "\n".join(lines)


def plot(sweeps: list[tuple[str, dict[str, dict[float, list[float]]], int]], path: Path) -> None:
    fig, axes = plt.subplots(
        1, len(sweeps), figsize=(5.5 * len(sweeps), 4.2), layout="constrained", squeeze=False
    )
    for ax, (name, results, _) in zip(axes[0], sweeps, strict=True):
        for method, per in results.items():
            fs = sorted(f for f, v in per.items() if v)
            means = [np.mean(per[f]) for f in fs]
            stds = [np.std(per[f]) for f in fs]
            ax.errorbar(fs, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_title(name)
        ax.set_xlabel("share of sign-flipping clients")
        ax.set_ylabel("final test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", type=Path, nargs="+")
    ap.add_argument("--plot", type=Path, help="PNG to write: final accuracy vs fraction")
    ap.add_argument("--curves", type=Path, help="PNG to write: accuracy vs round")
    args = ap.parse_args()
    sweeps = [load(s) for s in args.sweeps]
    for i, (name, results, clients) in enumerate(sweeps):
        print(("\n" if i else "") + f"### {name}\n")
        print(tables(results, clients))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(sweeps, args.plot)
    if args.curves:
        args.curves.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(args.sweeps, [name for name, _, _ in sweeps], args.curves)


if __name__ == "__main__":
    main()
