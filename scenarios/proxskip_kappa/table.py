"""Communication rounds to ||x - x*||^2 <= tol ||x0 - x*||^2 versus kappa, from both sweeps.

    python scenarios/proxskip_kappa/table.py runs/sweeps/pk-prox runs/sweeps/pk-lgd

For tol = 1e-8 (the issue's) and 1e-7: fedsim computes in float32, and at kappa = 1e4
ProxSkip's iterates stop improving near 7e-8 (x_hat - (gamma/p) h cancels in float32). A
run that never reaches a tolerance counts as "> its rounds"; Local GD's entry is its best H.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from fedsim.results import read_metrics

TOLS = (1e-8, 1e-7)


def runs(sweep: Path) -> list[tuple[dict[str, str], list[dict]]]:
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(r, read_metrics(sweep / "points" / f"{int(r['point']):03d}" / "seed0")) for r in rows]


def reach(metrics: list[dict], tol: float) -> float:
    return next((m["round"] for m in metrics if m["rel_dist_to_opt"] <= tol), float("inf"))


def text(n: float, metrics: list[dict]) -> str:
    return f"{n:.0f}" if n < float("inf") else f"> {len(metrics)}"


def main() -> None:
    prox, local = runs(Path(sys.argv[1])), runs(Path(sys.argv[2]))
    head = ["kappa", "tol", "ProxSkip", "GD", "Local GD (best H)", "GD / ProxSkip"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for p, pm in prox:
        kappa = p["data.options.kappa"]
        mine = [(r, m) for r, m in local if r["data.options.kappa"] == kappa]
        gd = next(m for r, m in mine if r["algorithm.local_steps"] == "1")
        for tol in TOLS:
            n_p, n_g = reach(pm, tol), reach(gd, tol)
            h, best = min(
                (
                    (r["algorithm.local_steps"], m)
                    for r, m in mine
                    if r["algorithm.local_steps"] != "1"
                ),
                key=lambda hm: (reach(hm[1], tol), hm[1][-1]["rel_dist_to_opt"]),
            )
            if n_p == float("inf"):
                ratio = "-"
            else:
                ratio = f"{n_g / n_p:.0f}x" if n_g < float("inf") else f"> {len(gd) / n_p:.0f}x"
            cells = [
                f"{float(kappa):.0e}",
                f"{tol:.0e}",
                text(n_p, pm),
                text(n_g, gd),
                f"{text(reach(best, tol), best)} (H = {h}, ends at "
                f"{best[-1]['rel_dist_to_opt']:.1e})",
                ratio,
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
