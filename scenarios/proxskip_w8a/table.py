"""Rounds (and local steps) to ||x - x*||^2 <= eps ||x0 - x*||^2 versus p, and plots.

    .venv/bin/python scenarios/proxskip_w8a/table.py runs/sweeps/w8a-ref \
        --plot docs/proxskip_w8a/rounds_vs_p.png --curves docs/proxskip_w8a/curves.png

Reads a sweep directory with p (and optionally data.partitioner) as axes: reference.py's
output, or a fedsim sweep of the same grid (same layout: sweep.csv and points/NNN/seed0/
metrics.jsonl). Local steps are iterations per client, grad_evals / num_clients (every
client computes K gradients in a round). A run that never reaches eps counts as
"> its rounds" (a lower bound); the best p per split and eps is in bold.
"""

from __future__ import annotations

import argparse
import csv
import math
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsim.results import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE = tomllib.loads((HERE / "base.toml").read_text())
KAPPA = 1e4  # L_max / lambda, set exactly by constants.py
TOLS = (1e-6, 1e-5)
INF = float("inf")


def runs(sweep: Path) -> dict[str, list[tuple[float, list[dict]]]]:
    """split -> [(p, metrics rows)] sorted by p, for seed 0."""
    with open(sweep / "sweep.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["seed"] == "0"]
    out: dict[str, list[tuple[float, list[dict]]]] = {}
    for r in rows:
        split = r.get("data.partitioner") or BASE["data"]["partitioner"]
        metrics = read_metrics(sweep / "points" / f"{int(r['point']):03d}" / "seed0")
        out.setdefault(split, []).append((float(r["algorithm.p"]), metrics))
    return {split: sorted(v, key=lambda pm: pm[0]) for split, v in out.items()}


def reach(metrics: list[dict], tol: float, clients: int) -> tuple[float, float]:
    """(rounds, local steps per client) when rel_dist_to_opt first is <= tol, else inf."""
    steps = 0.0
    for m in metrics:
        steps += m["grad_evals"] / clients
        if m["rel_dist_to_opt"] <= tol:
            return m["round"], steps
    return INF, INF


def local_steps(metrics: list[dict], clients: int) -> list[float]:
    total, out = 0.0, []
    for m in metrics:
        total += m["grad_evals"] / clients
        out.append(total)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--plot", type=Path, help="write the rounds-vs-p PNG here")
    ap.add_argument("--curves", type=Path, help="write the rel_dist_to_opt curves PNG here")
    args = ap.parse_args()
    clients = BASE["data"]["num_clients"]
    data = runs(args.sweep)

    head = ["split", "p", "p sqrt(kappa)"]
    for tol in TOLS:
        head += [f"rounds to {tol:.0e}", f"local steps to {tol:.0e}"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    reached: dict[str, dict[float, list[tuple[float, float, int, float]]]] = {}
    for split, pms in data.items():
        table = {
            p: [(*reach(m, tol, clients), len(m), local_steps(m, clients)[-1]) for tol in TOLS]
            for p, m in pms
        }
        reached[split] = table
        best = [min(table, key=lambda p, i=i: table[p][i][0]) for i in range(len(TOLS))]
        for p, cells in table.items():
            row = [split, f"{p:g}", f"{p * math.sqrt(KAPPA):g}"]
            for i, (rounds, steps, ran, ran_steps) in enumerate(cells):
                if rounds < INF:
                    r, s = f"{rounds:.0f}", f"{steps:.0f}"
                else:
                    r, s = f"> {ran}", f"> {ran_steps:.0f}"
                if p == best[i] and rounds < INF:
                    r, s = f"**{r}**", f"**{s}**"
                row += [r, s]
            print("| " + " | ".join(row) + " |")

    if args.plot:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for c, (split, table) in enumerate(reached.items()):
            color = f"C{c}"
            for i, (tol, style) in enumerate(zip(TOLS, ("o-", "s--"), strict=True)):
                hit = [(p, cells[i][0]) for p, cells in table.items() if cells[i][0] < INF]
                miss = [(p, cells[i][2]) for p, cells in table.items() if cells[i][0] == INF]
                if hit:
                    ax.plot(
                        *zip(*hit, strict=True),
                        style,
                        color=color,
                        ms=5,
                        label=f"{split}, eps = {tol:.0e}",
                    )
                if miss:
                    ax.plot(
                        *zip(*miss, strict=True),
                        "^",
                        color=color,
                        mfc="none",
                        label=f"{split}, eps = {tol:.0e}: not reached (rounds run)",
                    )
        ax.axvline(1 / math.sqrt(KAPPA), color="gray", ls=":", label="p = 1/sqrt(kappa)")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="p (probability of communicating per iteration)",
            ylabel="communication rounds to eps",
            title="ProxSkip on w8a, 10 clients, kappa = 1e4, gamma = 1/L_max",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")

    if args.curves:
        fig, axes = plt.subplots(
            len(data), 2, figsize=(10, 3.6 * len(data)), sharey=True, squeeze=False
        )
        for row, (split, pms) in zip(axes, data.items(), strict=True):
            for p, m in pms:
                rel = [r["rel_dist_to_opt"] for r in m]
                row[0].plot([r["round"] for r in m], rel, label=f"p = {p:g}")
                row[1].plot(local_steps(m, clients), rel, label=f"p = {p:g}")
            for ax, xlabel in zip(row, ("communication rounds", "local steps"), strict=True):
                for tol in TOLS:
                    ax.axhline(tol, color="gray", lw=0.8, ls=":")
                ax.set(xscale="log", yscale="log", xlabel=xlabel, title=f"{split} split")
                ax.grid(True, which="both", alpha=0.3)
            row[0].set_ylabel("||x - x*||^2 / ||x0 - x*||^2")
            row[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.curves, dpi=100)
        print(f"curves: {args.curves}")


if __name__ == "__main__":
    main()
