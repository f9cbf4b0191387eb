"""`fedsim plot DIR`: PNG plots of a run's round metrics."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsim.results import read_metrics  # noqa: E402

PLOTTED = ("train_loss", "eval_loss", "eval_accuracy", "dist_to_opt", "rel_dist_to_opt")
# x axes of every metric plot; bytes_up is drawn cumulatively
AXES = (("round", "round"), ("bytes_up", "cumulative uplink bytes"), ("sim_time_s", "simulated s"))


def plot_run(run_dir: Path | str) -> list[Path]:
    """One PNG per metric, each with panels against rounds, simulated time and uplink bytes."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    cumulative_up = list(accumulate(r["bytes_up"] for r in rows))
    written = []
    for metric in PLOTTED:
        pts = [(i, r[metric]) for i, r in enumerate(rows) if metric in r]
        if not pts:
            continue
        fig, axes = plt.subplots(1, len(AXES), figsize=(4 * len(AXES), 3.2))
        for ax, (key, label) in zip(axes, AXES, strict=True):
            xs = [cumulative_up[i] if key == "bytes_up" else rows[i][key] for i, _ in pts]
            ax.plot(xs, [v for _, v in pts], marker="." if len(pts) < 50 else None)
            ax.set_xlabel(label)
            ax.set_ylabel(metric)
            if metric in ("dist_to_opt", "rel_dist_to_opt") and all(v > 0 for _, v in pts):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
