"""Scale: FedAvg with 10,000 registered clients and 100 per round, in-process.

Memory must grow with the cohort, not the population: client data is generated
when a client is first sampled (FedProx Synthetic, made per client from its
seed) and per-process caches are bounded. Each configuration runs in a fresh
process, so its peak RSS is its own. Reported: peak RSS of the 10k run and its
time per round against the same cohort drawn from 100 registered clients: the
fastest round (first left out) over three alternating runs of each, since this
shared machine only ever adds time.

    python benchmarks/scale.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
COHORT, ROUNDS = 100, 8


def run_one(population: int) -> dict[str, float]:
    """One run in this process: seconds per round and peak RSS."""
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
        walls = [r["wall_s"] for r in read_metrics(tmp)]
    rounds = [b - a for a, b in zip(walls, walls[1:], strict=False)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"round_s": min(rounds), "peak_rss_gib": peak}


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
    runs: dict[int, list[dict[str, float]]] = {COHORT: [], 10_000: []}
    for _ in range(3):
        for population, results in runs.items():
            results.append(in_fresh_process(population))
    small, large = (
        {
            "round_s": min(r["round_s"] for r in results),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in results),
        }
        for results in runs.values()
    )
    print(f"{'registered':>10s} {'cohort':>6s} {'s/round':>8s} {'peak RSS GiB':>12s}")
    for n, m in ((COHORT, small), (10_000, large)):
        print(f"{n:10d} {COHORT:6d} {m['round_s']:8.3f} {m['peak_rss_gib']:12.3f}")
    figures = {
        "peak_rss_gib": round(large["peak_rss_gib"], 3),
        "round_time_ratio_10k_vs_100": round(large["round_s"] / small["round_s"], 3),
        "peak_rss_gib_100": round(small["peak_rss_gib"], 3),
        "round_s_100": round(small["round_s"], 4),
        "round_s_10k": round(large["round_s"], 4),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
