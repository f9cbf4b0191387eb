"""Final accuracy (mean over seeds) and the epsilon actually spent, per mechanism and target.

python scenarios/privacy_sweep/table.py runs/sweeps/privacy_sweep
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    sweep = Path(sys.argv[1])
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = defaultdict(list)
    for r in rows:
        run = sweep / "points" / f"{int(r['point']):03d}" / f"seed{r['seed']}"
        summary = json.loads((run / "summary.json").read_text())
        key = (r["privacy.mechanism"], float(r["privacy.epsilon"]))
        cells[key].append(
            (
                summary["final"]["eval_accuracy"],
                summary["privacy"]["final_epsilon"],
                summary["privacy"]["noise_multiplier"],
            )
        )
    print("| mechanism | target epsilon | sigma | epsilon spent | final accuracy |")
    print("|---|---|---|---|---|")
    for (mech, eps), runs in sorted(cells.items()):
        acc = np.array([a for a, _, _ in runs])
        spent = max(e for _, e, _ in runs)
        print(
            f"| {mech} | {eps:g} | {runs[0][2]:.3f} | {spent:.3f} | "
            f"{acc.mean():.3f} ± {acc.std():.3f} |"
        )
    if len(sys.argv) > 2:
        plot(cells, Path(sys.argv[2]))


def plot(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mech in sorted({m for m, _ in cells}):
        eps = sorted(e for m, e in cells if m == mech)
        xs = [e if np.isfinite(e) else 32.0 for e in eps]
        acc = [np.array([a for a, _, _ in cells[(mech, e)]]) for e in eps]
        means, stds = [a.mean() for a in acc], [a.std() for a in acc]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=mech)
    ax.set_xscale("log", base=2)
    ax.set_xticks([0.5, 1, 2, 4, 8, 32], ["0.5", "1", "2", "4", "8", "inf"])
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("final test accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
