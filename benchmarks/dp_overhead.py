"""DP-SGD overhead: time per local step with and without Opacus's private gradients.

One digits client (about 300 examples), batch 64, on the MLP (64-256-256-10) and the
small CNN. The plain step is fedsim's local SGD step; the private one computes per-example
gradients with Opacus's GradSampleModule (hooks), clips each to C, adds Gaussian noise
(DPOptimizer), on Poisson batches of the same expected size. The two alternate in this
process; each figure is the fastest of several repeats (noise on this machine only adds
time). Target (issue 7): at most 2x.

    python benchmarks/dp_overhead.py
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from fedsim.clients.objective import cohort_for
from fedsim.config import client_spec, load_scenario

RESULTS = Path(__file__).parent / "results"
MODELS = {"mlp": {"name": "mlp", "hidden": [256, 256]}, "cnn": {"name": "cnn"}}
STEPS, REPEATS, BATCH = 50, 7, 64


def objective(model: dict, private: bool):
    raw = {
        "data": {"dataset": "digits", "num_clients": 5},
        "model": model,
        "algorithm": {"name": "local_sgd", "batch_size": BATCH, "local_steps": STEPS},
    }
    if private:
        raw["privacy"] = {"mechanism": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    f = cohort_for(client_spec(load_scenario(raw)), [0])
    f.bind(f.load([torch.nn.utils.parameters_to_vector(f.model.parameters()).detach().numpy()]))
    return f


def seconds_per_step(f) -> float:
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in f.batches(BATCH, STEPS, [gen]):
        f.sgd_step(batch, 0.01)
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    torch.set_num_threads(1)
    figures: dict[str, float] = {}
    for name, model in MODELS.items():
        plain, private = objective(model, False), objective(model, True)
        best = {"plain": float("inf"), "dp": float("inf")}
        for _ in range(REPEATS):  # alternate, keep the fastest
            best["plain"] = min(best["plain"], seconds_per_step(plain))
            best["dp"] = min(best["dp"], seconds_per_step(private))
        figures[f"{name}_plain_ms"] = round(1e3 * best["plain"], 3)
        figures[f"{name}_dp_ms"] = round(1e3 * best["dp"], 3)
        figures[f"dp_vs_plain_{name}"] = round(best["dp"] / best["plain"], 3)
        print(
            f"{name}: plain {1e3 * best['plain']:.3f} ms/step, DP-SGD {1e3 * best['dp']:.3f}"
            f" ms/step, ratio {best['dp'] / best['plain']:.2f}"
        )
    figures["machine"] = platform.machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dp_overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k.startswith("dp_vs")}))


if __name__ == "__main__":
    main()
