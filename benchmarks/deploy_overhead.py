"""Deployment overhead: FedAvg on 3 SuperNodes of a loopback deployment (TLS, authenticated
SuperNodes) against the in-process runtime, 10 rounds each.

Workloads: the quickstart (digits MLP, tiny rounds: the overhead alone) and the ~1M-parameter
MLP of engine_overhead.py with 10 local steps of batch 32, both on 3 clients. Seconds per
round are the mean over rounds 2..R of the run's own `wall_s` (round 1 includes starting
the ClientApps and is reported apart). `--stock` also runs Flower's own SuperNodes (a fresh
`flwr-clientapp` process per message, Flower's 3 s polls), to show where the seconds go.

    python benchmarks/deploy_overhead.py [--rounds 10] [--stock]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedsim import deploy
from fedsim.config import Scenario, load_scenario
from fedsim.results import create_run_dir, read_metrics
from fedsim.runtime import launch

sys.path.insert(0, str(Path(__file__).parent))
from engine_overhead import ALGORITHM, WORKLOADS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parents[1]
CLIENTS = 3


def scenarios(rounds: int) -> dict[str, Scenario]:
    quick = load_scenario(ROOT / "scenarios" / "quickstart.toml")
    heavy = {**WORKLOADS["1m"], "algorithm": ALGORITHM, "name": "deploy-1m", "seed": 0}
    heavy = load_scenario(heavy)
    return {
        name: s.model_copy(
            update={"rounds": rounds, "data": s.data.model_copy(update={"num_clients": CLIENTS})}
        )
        for name, s in (("quickstart", quick), ("mlp_1m", heavy))
    }


def timed(s: Scenario, out: Path, federation: str | None = None) -> dict:
    """Run `s` into `out`; per-round seconds from wall_s, and the whole run's seconds."""
    start = time.perf_counter()
    if federation is None:
        launch(s, out)
    else:
        s = s.model_copy(update={"runtime": "deployment"})
        create_run_dir(out, s.to_toml(), overwrite=False)
        launch(s, out, federation=federation)
    total = time.perf_counter() - start
    walls = [r["wall_s"] for r in read_metrics(out)]
    return {
        "first_round_s": walls[0],
        "round_s": (walls[-1] - walls[0]) / (len(walls) - 1),
        "run_s": total,
    }


def deployed(tmp: Path, cases: dict[str, Scenario], stock: bool) -> dict:
    root = tmp / ("stock" if stock else "fedsim")
    dep = deploy.up(CLIENTS, root, stock=stock)
    os.environ["FLWR_HOME"] = str(deploy.Layout(dep.root).flwr_home)
    try:
        return {n: timed(s, tmp / f"{root.name}-{n}", dep.connection) for n, s in cases.items()}
    finally:
        deploy.down(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--stock", action="store_true", help="also Flower's stock SuperNodes")
    args = ap.parse_args()
    cases = scenarios(args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inproc = {n: timed(s, tmp / f"inprocess-{n}") for n, s in cases.items()}
        runs = {"fedsim": deployed(tmp, cases, False)}
        if args.stock:
            runs["stock"] = deployed(tmp, cases, True)
        same = {
            f"{kind}-{n}": float(
                np.max(
                    np.abs(
                        np.load(tmp / f"inprocess-{n}" / "final_model.npy")
                        - np.load(tmp / f"{kind}-{n}" / "final_model.npy")
                    )
                )
            )
            for kind in runs
            for n in cases
        }
    fedsim_runs = runs["fedsim"]
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rounds": args.rounds,
        "supernodes": CLIENTS,
        "inprocess": inproc,
        "deployment": runs,
        "max_abs_model_difference": same,
        "deployment_round_overhead_s": fedsim_runs["quickstart"]["round_s"]
        - inproc["quickstart"]["round_s"],
        "deployment_vs_inprocess_round": fedsim_runs["mlp_1m"]["round_s"]
        / inproc["mlp_1m"]["round_s"],
    }
    if "stock" in runs:
        out["stock_round_overhead_s"] = (
            runs["stock"]["quickstart"]["round_s"] - inproc["quickstart"]["round_s"]
        )
        out["stock_vs_inprocess_round"] = (
            runs["stock"]["mlp_1m"]["round_s"] / inproc["mlp_1m"]["round_s"]
        )
    for kind, per in {"inprocess": inproc, **{f"deploy/{k}": v for k, v in runs.items()}}.items():
        for n, t in per.items():
            print(
                f"{kind:>15} {n:>10}: {t['round_s']:.3f} s/round "
                f"(round 1 {t['first_round_s']:.2f} s, run {t['run_s']:.1f} s)"
            )
    for key in [k for k in out if k.endswith(("_s", "_round"))]:
        print(f"{key}: {out[key]:.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy_overhead.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
