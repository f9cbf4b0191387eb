"""ProxSkip on the w8a problem of base.toml in NumPy (float64): rounds to eps versus p.

    .venv/bin/python scenarios/proxskip_w8a/reference.py --out runs/sweeps/w8a-ref

A fedsim sweep of this grid to eps = 1e-6 would take well over an hour on a 2-core machine
(about 960,000 local iterations of the 10 clients, ~5 ms each in fedsim, ~1.4 ms here; see
docs/proxskip_w8a/README.md), so this script runs the update rule of docs/algorithms.md section
3 itself, on fedsim's own clients, x0 and x* (constants.py) and with fedsim's round lengths
K ~ Geometric(p) (`round_length(p, seed, round)`: the coins a fedsim run with the same seed
draws), so its trajectories are fedsim's up to float32 rounding (check.py compares them).
Each round every client runs K iterations x_hat_i = x_i - gamma (grad f_i(x_i) - h_i), the
last one ending in the average x = mean_j (x_hat_j - (gamma/p) h_j), then
h_i += (p/gamma)(x - x_hat_i). p = 1 is GD.

All p values of a split advance together, one local iteration at a time, so that one
sparse product serves every run (on this 2-core machine two processes are no faster than
one). A run stops at --stop (relative distance), at its round cap, or after --max-iters
local iterations. The output has a fedsim sweep's layout (sweep.csv with data.partitioner
and algorithm.p; points/NNN/seed0/metrics.jsonl with round, rel_dist_to_opt, dist_to_opt
and grad_evals summed over the clients), so table.py reads either.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from fedsim.methods.proxskip import round_length

sys.path.insert(0, str(Path(__file__).resolve().parent))
from constants import problem  # noqa: E402

PARTITIONERS = ("iid", "shards")
# p and its round cap (far above what eps = 1e-6 needs: GD, p = 1, takes about 46,000)
GRID = [
    (0.001, 20000),
    (0.002, 20000),
    (0.003, 20000),
    (0.005, 20000),
    (0.01, 20000),
    (0.03, 20000),
    (0.1, 50000),
    (0.3, 100000),
    (1.0, 200000),
]


class Run:
    """One p: the server model, the round counter, and the recorded rows."""

    def __init__(self, p: float, cap: int, x0: np.ndarray, seed: int) -> None:
        self.p, self.cap, self.seed = p, cap, seed
        self.x, self.round, self.iters, self.rows = x0.copy(), 1, 0, []
        self.ends_at = round_length(p, seed, 1)  # the iteration that ends round 1


def sweep(
    grid: list[tuple[float, int]], stop: float, max_iters: int, partitioner: str, seed: int = 0
) -> tuple[list[Run], float]:
    pb = problem(seed, partitioner)
    n, d = len(pb.rows), pb.x0.size
    blocks = sp.block_diag([sp.csr_matrix(r) for r in pb.rows], format="csr")
    blocks_t = blocks.T.tocsr()
    weights = np.concatenate([np.full(len(r), 1.0 / len(r)) for r in pb.rows])[:, None]
    gamma, lam = pb.gamma, pb.lam
    dist0 = float(np.sum((pb.x0 - pb.x_star) ** 2))

    runs = [Run(p, cap, pb.x0, seed) for p, cap in grid]
    active = list(runs)
    xi = np.repeat(pb.x0[None, :, None], n, axis=0).repeat(len(active), axis=2)  # n x d x P
    h = np.zeros_like(xi)
    t, start, last_print = 0, time.perf_counter(), 0.0
    while active:
        t += 1
        margins = blocks @ xi.reshape(n * d, -1)
        grad = -(blocks_t @ (weights * expit(-margins))).reshape(n, d, -1) + lam * xi
        xi -= gamma * (grad - h)  # x_hat_i of every client and run
        keep = []
        for k, run in enumerate(active):
            run.iters = t
            if t == run.ends_at:  # communication: average, then update h
                p = run.p
                run.x = np.mean(xi[:, :, k] - (gamma / p) * h[:, :, k], axis=0)
                h[:, :, k] += (p / gamma) * (run.x - xi[:, :, k])
                xi[:, :, k] = run.x
                dist = float(np.sum((run.x - pb.x_star) ** 2))
                run.rows.append(
                    {
                        "round": run.round,
                        "rel_dist_to_opt": dist / dist0,
                        "dist_to_opt": dist,
                        "grad_evals": n * round_length(p, seed, run.round),
                    }
                )
                if dist / dist0 <= stop or run.round >= run.cap or t >= max_iters:
                    continue
                run.round += 1
                run.ends_at = t + round_length(p, seed, run.round)
            elif t >= max_iters:
                continue  # ends mid-round: the partial round is not counted
            keep.append(k)
        if len(keep) < len(active):
            active = [active[k] for k in keep]
            xi, h = xi[:, :, keep].copy(), h[:, :, keep].copy()
        now = time.perf_counter() - start
        if now - last_print > 60:
            last_print = now
            state = ", ".join(
                f"p={r.p}: round {r.round} rel {r.rows[-1]['rel_dist_to_opt']:.1e}"
                for r in active
                if r.rows
            )
            print(f"[{partitioner} {now:.0f} s] iteration {t}: {state}", flush=True)
    return runs, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stop", type=float, default=1e-6, help="stop at this rel_dist_to_opt")
    ap.add_argument("--max-iters", type=int, default=1_000_000, help="local iterations cap")
    ap.add_argument("--partitioner", nargs="*", default=PARTITIONERS, help="splits to run")
    ap.add_argument("--p", type=float, nargs="*", help="a subset of the grid's p values")
    args = ap.parse_args()
    start = time.perf_counter()
    grid = [(p, cap) for p, cap in GRID if not args.p or p in args.p]
    summary = []
    for partitioner in args.partitioner:
        runs, wall = sweep(grid, args.stop, args.max_iters, partitioner)
        for run in runs:
            point = len(summary)
            run_dir = args.out / "points" / f"{point:03d}" / "seed0"
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in run.rows)
            row = {
                "point": point,
                "seed": run.seed,
                "data.partitioner": partitioner,
                "algorithm.p": run.p,
                "rounds": run.cap,
                "rounds_run": len(run.rows),
                "local_iters": run.iters,
                "final_rel_dist_to_opt": run.rows[-1]["rel_dist_to_opt"],
                "split_wall_s": round(wall),
            }
            summary.append(row)
            print(row, flush=True)
    with open(args.out / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    print(f"total wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
