"""Per-client gradient counts of the gradskip sweep against GradSkip's theory.

    python scenarios/gradskip/gradients.py runs/sweeps/gradskip >> docs/gradskip/report.md

Counts are per communication round, up to the round where ProxSkip / GradSkip first reach
||x - x*||^2 <= 1e-8 ||x0 - x*||^2; theory: 1 / (1 - q_i (1 - p)) for GradSkip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedsim.config import load_scenario
from fedsim.data import load_dataset
from fedsim.results import read_metrics


def per_client(run: Path, n: int) -> tuple[int, list[float]]:
    hit = next(r["round"] for r in read_metrics(run) if r["rel_dist_to_opt"] <= 1e-8)
    rows = [c for c in read_metrics(run, "clients.jsonl") if c["round"] <= hit]
    return hit, [
        float(np.mean([c["grad_evals"] for c in rows if c["partition"] == i])) for i in range(n)
    ]


def main() -> None:
    sweep = Path(sys.argv[1])
    base = load_scenario(Path(__file__).parent / "base.toml")
    kappa = load_dataset(base.data, base.seed).meta["kappa"]
    p, n = base.algorithm.p, len(kappa)
    q = [(1 - 1 / k) / (1 - 1 / max(kappa)) for k in kappa]
    (r_prox, prox), (r_grad, grad) = (
        per_client(sweep / f"points/{i:03d}/seed0", n) for i in (0, 1)
    )
    print(
        f"\n## Per-client gradients\n\nRounds to 1e-8: ProxSkip {r_prox}, GradSkip {r_grad} "
        f"({r_grad / r_prox - 1:+.1%}).\n"
    )
    print(
        "| client | kappa_i | q_i | ProxSkip grads/round | GradSkip grads/round | theory | "
        "GradSkip / theory | saving |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i in range(n):
        theory = 1 / (1 - q[i] * (1 - p))
        print(
            f"| {i} | {kappa[i]:.0f} | {q[i]:.3f} | {prox[i]:.1f} | {grad[i]:.1f} | {theory:.1f} "
            f"| {grad[i] / theory:.3f} | {prox[i] / grad[i]:.1f}x |"
        )


if __name__ == "__main__":
    main()
