"""Scale: FedAvg with 10,000 and 10,000,000 registered clients and 100 per round, in-process.

Memory must grow with the cohort, not the population: client data is generated when a
client is first sampled (FedProx Synthetic, made per client from its seed), a node's
Context is made when the node is first reached, the node table is arithmetic, and
per-process caches are bounded. Each configuration runs in a fresh process, so its peak RSS
and its start-up (process start to the first round: imports, scenario, data, the
federation) are its own. Reported: peak RSS, start-up and time per round against the same
cohort drawn from 100 registered clients: the fastest round (first left out) over three
alternating runs of each, since this shared machine only ever adds time.

    python benchmarks/scale.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COHORT, ROUNDS = 100, 8


def run_one(population: int) -> dict[str, float]:
    """One run in this process: seconds per round, start-up seconds and peak RSS."""
    t0 = time.perf_counter()
    from fedsim.config import load_scenario
    from fedsim.results import read_metrics
    from fedsim.runtime import launch

    s = load_scenario(
        {
            "name": f"scale-{population}",
            "rounds": ROUNDS,
            "checkpoint_every": 0,
            "data": {
                "dataset": "synthetic",
                "num_clients": population,
                "partitioner": "natural",
                "options": {"max_samples": 500},
            },
            "model": {"name": "mlp", "hidden": [64]},
            "algorithm": {
                "name": "fedavg",
                "local_steps": 10,
                "batch_size": 32,
                "fraction": COHORT / population,
            },
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        launch(s, tmp)
        done = time.perf_counter()
        walls = [r["wall_s"] for r in read_metrics(tmp)]
    rounds = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    startup = done - t0 - walls[-1]  # everything before the first round began
    return {"round_s": min(rounds), "peak_rss_gib": peak, "startup_s": startup}


def in_fresh_process(population: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(population)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(int(sys.argv[2]))))
        return
    runs: dict[int, list[dict[str, float]]] = {COHORT: [], 10_000: [], 10_000_000: []}
    for _ in range(3):
        for population, results in runs.items():
            results.append(in_fresh_process(population))
    best = {
        n: {
            "round_s": min(r["round_s"] for r in results),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in results),
            "startup_s": min(r["startup_s"] for r in results),
        }
        for n, results in runs.items()
    }
    head = ("registered", "cohort", "s/round", "start-up s", "peak RSS GiB")
    print("{:>10s} {:>6s} {:>8s} {:>10s} {:>12s}".format(*head))
    for n, m in best.items():
        print(
            f"{n:10d} {COHORT:6d} {m['round_s']:8.3f} {m['startup_s']:10.2f}"
            f" {m['peak_rss_gib']:12.3f}"
        )
    small, large, huge = best[COHORT], best[10_000], best[10_000_000]
    figures = {
        "peak_rss_gib": round(large["peak_rss_gib"], 3),
        "round_time_ratio_10k_vs_100": round(large["round_s"] / small["round_s"], 3),
        "peak_rss_gib_10m": round(huge["peak_rss_gib"], 3),
        "startup_s_10m": round(huge["startup_s"], 2),
        "round_time_ratio_10m_vs_100": round(huge["round_s"] / small["round_s"], 3),
        "peak_rss_gib_100": round(small["peak_rss_gib"], 3),
        "startup_s_100": round(small["startup_s"], 2),
        "round_s_100": round(small["round_s"], 4),
        "round_s_10k": round(large["round_s"], 4),
        "round_s_10m": round(huge["round_s"], 4),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
