"""Flower Apps on fedsim vs on Flower's Simulation Engine: whole runs and steady-state rounds.

The four Flower Apps of tests/flower_apps/ (PyTorch + FedAvg, a custom NumPy strategy, query
messages with state in both Contexts, clients that follow the run config) at 10 and 100
SuperNodes, run with `fedsim.run_flower_app` (in this process, no Ray) and on Flower's
Simulation Engine (tests/flower_reference.py: Ray on this machine's cores, one CPU per
ClientApp). Run config: the app's defaults but `min-nodes`, the SuperNodes its ServerApp waits
for before round 1: all of them (Flower registers its SuperNodes while the ServerApp already
runs), and its rounds key (`num-server-rounds`, read from `[tool.flwr.app.config]`).

Two measures, each as the caller waits for the run; imports are timed on neither side. All
fedsim runs come first, then all Flower runs (Ray's processes still exit after a run, on the
same cores).

* whole run (`speedup`, acceptance key `flower_app_speedup_min` >= 5): the app's R default
  rounds, run once on each side. Flower's time includes Ray's start and stop (a `flwr run`
  pays them on every run), but not the first-run costs that an untimed run takes first (see
  below); fedsim's includes the warm-up of its first run in the process (~1 s for the PyTorch
  app).
* steady-state round (`marginal_speedup`, key `flower_app_marginal_speedup_min_100`, over
  the 100-SuperNode rows, whose Flower rounds are long enough to resolve): the same
  app and size also run with 2R rounds; (t(2R) - t(R)) / R is the seconds one more round
  costs, with every start-up cost (Ray's, the SuperNodes', fedsim's warm-up) cancelled on both
  sides. Flower: one run of each (the R run is the whole run above), after one untimed run of
  a small app that takes Ray's and Flower's first-run costs in this process out of t(R);
  fedsim: the fastest of `--repeats` runs of each. A single Flower run's start-up varies by
  up to ~1 s, so Flower's marginal round is good to about 1 s / R (the smaller apps at 10
  SuperNodes, whose rounds take ~0.3 s on Flower, are the least certain); where Flower's
  t(2R) <= t(R) the row's `marginal_speedup` is null, left out of the minimum and counted in
  `marginal_unresolved`.

The PyTorch app is also run on fedsim with `workers=2` (ClientApps on two threads), timed as
fedsim's marginal round above; `pytorch_workers2_over_workers1` is its seconds per round with
workers=2 over those with workers=1 at 100 SuperNodes (< 1: two workers are faster).

The arrays the ServerApps kept after R rounds must agree between the two engines up to the
order of float sums (`arrays_agree`); after 2R rounds the largest difference is reported
(`max_array_diff_2r`: more rounds of SGD widen those float32 differences).

    python benchmarks/flower_apps.py [--sizes 10 100] [--apps NAME ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fedsim.flower_apps import run_flower_app  # imported here: not timed, like flwr's

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.flower_reference import run_on_flower  # noqa: E402

RESULTS = Path(__file__).parent / "results"
APPS_DIR = REPO / "tests" / "flower_apps"
APPS = ["pytorch_fedavg", "numpy_custom_strategy", "query_state", "run_config_clients"]
WORKERS_APP = "pytorch_fedavg"  # also run on fedsim with workers=2
ATOL = 1e-6  # arrays agree to ATOL * max(1, max |x|): float32 sums in another order


def differences(got: RecordDict, want: RecordDict) -> tuple[float, float, bool]:
    """(largest array difference, largest relative metric difference, arrays agree)."""
    assert sorted(got.keys()) == sorted(want.keys())
    arrays, metrics, agree = 0.0, 0.0, True
    for name, record in want.items():
        for key, value in record.items():
            other = got[name][key]
            if isinstance(record, ArrayRecord):
                a, b = other.numpy().astype(float), value.numpy().astype(float)
                diff = float(np.abs(a - b).max(initial=0.0))
                arrays = max(arrays, diff)
                agree &= diff <= ATOL * max(1.0, float(np.abs(b).max(initial=0.0)))
            elif isinstance(value, float | list) and not isinstance(value, bool):
                a, b = np.asarray(other, dtype=float), np.asarray(value, dtype=float)
                rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
                metrics = max(metrics, float(rel.max(initial=0.0)))
            else:
                agree &= other == value
    return arrays, metrics, agree


def rounds_of(app: Path) -> tuple[str, int]:
    """The app's rounds key in `[tool.flwr.app.config]` and its default value."""
    config = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    (key,) = [k for k in config if k.endswith("rounds")]
    return key, int(config[key])


def timed(fn, *args, **kwargs):
    """(what fn returned, the seconds it took)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def fedsim_round_s(
    app: Path, config: dict, nodes: int, key: str, rounds: int, repeats: int, workers: int = 1
):
    """fedsim's seconds per steady-state round, (fastest 2R run - fastest R run) / R, and
    the last 2R run."""
    best = {rounds: float("inf"), 2 * rounds: float("inf")}
    for _ in range(repeats):
        for r in best:  # R and 2R alternate, so drift hits both alike
            run, seconds = timed(run_flower_app, app, {**config, key: r}, nodes, workers=workers)
            best[r] = min(best[r], seconds)
    return (best[2 * rounds] - best[rounds]) / rounds, run


def on_fedsim(name: str, nodes: int, repeats: int) -> dict:
    """fedsim's whole run of the app's R rounds, its marginal round, and the runs' states."""
    app = APPS_DIR / name
    key, rounds = rounds_of(app)
    config = {"min-nodes": nodes}  # the ServerApp waits for every SuperNode to connect
    run, whole = timed(run_flower_app, app, config, nodes)  # as a user's first run
    marginal, run2 = fedsim_round_s(app, config, nodes, key, rounds, repeats)
    out = {"whole": whole, "marginal": marginal, "state": run.context.state}
    out["state_2r"] = run2.context.state
    if name == WORKERS_APP:
        out["workers2"], _ = fedsim_round_s(app, config, nodes, key, rounds, repeats, workers=2)
    return out


def on_flower(name: str, nodes: int, fedsim: dict) -> dict:
    """The app on Flower at R and 2R rounds, beside fedsim's figures: the table's row."""
    app = APPS_DIR / name
    key, rounds = rounds_of(app)
    config = {"min-nodes": nodes}
    context, flower_s = timed(run_on_flower, app, config, nodes)
    context2, flower2_s = timed(run_on_flower, app, {**config, key: 2 * rounds}, nodes)
    flower_round = (flower2_s - flower_s) / rounds  # <= 0: lost in start-up noise
    arrays, metrics, agree = differences(fedsim["state"], context.state)
    arrays2, _, _ = differences(fedsim["state_2r"], context2.state)
    fedsim_s, fedsim_round = fedsim["whole"], fedsim["marginal"]
    row = {
        "rounds": rounds,
        "fedsim_s": round(fedsim_s, 4),
        "flower_s": round(flower_s, 3),
        "fedsim_s_per_round": round(fedsim_s / rounds, 4),
        "flower_s_per_round": round(flower_s / rounds, 3),
        "speedup": round(flower_s / fedsim_s, 1),
        "flower_2r_s": round(flower2_s, 3),
        "fedsim_marginal_s_per_round": round(fedsim_round, 4),
        "flower_marginal_s_per_round": round(flower_round, 3),
        "marginal_speedup": round(flower_round / fedsim_round, 1) if flower_round > 0 else None,
        "max_array_diff": arrays,
        "max_metric_rel_diff": metrics,
        "state_agrees": bool(agree),
        "max_array_diff_2r": arrays2,  # more rounds of SGD widen float32 order differences
    }
    if "workers2" in fedsim:
        row["fedsim_workers2_marginal_s_per_round"] = round(fedsim["workers2"], 4)
        row["workers2_over_workers1"] = round(fedsim["workers2"] / fedsim_round, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--apps", nargs="+", default=APPS, choices=APPS)
    parser.add_argument("--repeats", type=int, default=3, help="fedsim runs per round count")
    args = parser.parse_args()
    start = time.perf_counter()
    # fedsim first, all of it: Ray's processes, still exiting after a run, would share the cores
    fedsim = {(name, n): on_fedsim(name, n, args.repeats) for name in args.apps for n in args.sizes}
    warm_up = APPS_DIR / "query_state"  # Ray's and Flower's first-run costs, untimed
    run_on_flower(warm_up, {"min-nodes": 2, rounds_of(warm_up)[0]: 1}, 2)
    rows = {
        name: {str(n): on_flower(name, n, fedsim[name, n]) for n in args.sizes}
        for name in args.apps
    }
    every = [r for sizes in rows.values() for r in sizes.values()]
    resolved = [r["marginal_speedup"] for r in every if r["marginal_speedup"] is not None]
    large = [  # rounds long enough on Flower (0.5-1.8 s) for one run's start-up noise
        r["marginal_speedup"]
        for s in rows.values()
        if (r := s.get("100")) and r["marginal_speedup"]
    ]
    print(
        f"\n{'app':22s} {'nodes':>5s} {'R':>2s} | whole run: {'fedsim s':>8s} {'flower s':>8s} "
        f"{'x':>6s} | marginal round: {'fedsim s':>8s} {'flower s':>8s} {'x':>6s} | "
        f"{'max |da|':>8s}"
    )
    for name, sizes in rows.items():
        for n, r in sizes.items():
            marginal = r["marginal_speedup"] or float("nan")  # nan: unresolved
            print(
                f"{name:22s} {n:>5s} {r['rounds']:2d} | {'':11s}{r['fedsim_s']:8.3f} "
                f"{r['flower_s']:8.2f} {r['speedup']:6.1f} | {'':16s}"
                f"{r['fedsim_marginal_s_per_round']:8.4f} "
                f"{r['flower_marginal_s_per_round']:8.3f} {marginal:6.1f} | "
                f"{r['max_array_diff']:8.1e}"
            )
    figures = {
        "flower_app_speedup_min": min(r["speedup"] for r in every),
        "flower_app_marginal_speedup_min_100": min(large, default=None),
        "marginal_unresolved": len(every) - len(resolved),  # Flower's t(2R) <= t(R)
        "arrays_agree": all(r["state_agrees"] for r in every),
    }
    if WORKERS_APP in rows:
        print(f"\nfedsim {WORKERS_APP}, marginal s/round:  workers=1  workers=2  w2/w1")
        for n, r in rows[WORKERS_APP].items():
            print(
                f"{n:>5s} SuperNodes {'':20s}{r['fedsim_marginal_s_per_round']:9.4f}  "
                f"{r['fedsim_workers2_marginal_s_per_round']:9.4f}  "
                f"{r['workers2_over_workers1']:5.2f}"
            )
        if "100" in rows[WORKERS_APP]:
            figures["pytorch_workers2_over_workers1"] = rows[WORKERS_APP]["100"][
                "workers2_over_workers1"
            ]
    seconds = round(time.perf_counter() - start, 1)
    figures |= {"apps": rows, "repeats": args.repeats, "benchmark_s": seconds}
    figures |= {"cpus": os.cpu_count(), "machine": platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flower_apps.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "apps"}))


if __name__ == "__main__":
    main()
