"""DP-SGD overhead: time per local step with and without private gradients, and a private
round of a cohort as one batched computation against client by client.

One digits client (about 300 examples), batch 64, on the MLP (64-256-256-10) and the
small CNN, one thread. The plain step is fedsim's local SGD step; the private one clips
each example's gradient to C by book-keeping (privacy/clipping.py: no per-example gradient
of a Linear layer is formed) and adds N(0, sigma^2 C^2), on Poisson batches of the same
expected size. The step's Gaussian draw alone (torch.randn of the model's size) is timed
beside them: the part of the ratio no clipping path can remove. Then a round of DP-SGD for
20 clients (10 steps each) vectorized against the same clients one by one. Each pair
alternates in this process; each figure is the fastest of several repeats (noise on this
machine only adds time). Target (issue 19): at most 2x.

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
STEPS, REPEATS, BATCH = 50, 11, 64
CLIENTS, COHORT_STEPS = 20, 10


def spec(model: dict, private: bool, clients: int = 5) -> str:
    raw = {
        "data": {"dataset": "digits", "num_clients": clients},
        "model": model,
        "algorithm": {"name": "local_sgd", "batch_size": BATCH, "local_steps": STEPS},
    }
    if private:
        raw["privacy"] = {"mechanism": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    return client_spec(load_scenario(raw))


def objective(model: dict, private: bool, partitions=(0,), vectorize=False, clients=5):
    f = cohort_for(spec(model, private, clients), list(partitions), vectorize)
    x0 = torch.nn.utils.parameters_to_vector(f.model.parameters()).detach().numpy()
    f.bind(f.load([x0] * len(partitions)))
    return f


def seconds_per_step(f) -> float:
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in f.batches(BATCH, STEPS, [gen]):
        f.sgd_step(batch, 0.01)
    return (time.perf_counter() - start) / STEPS


def seconds_per_draw(d: int) -> float:
    """The private step's noise alone: d standard normals from a torch generator."""
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(STEPS):
        torch.randn(d, generator=gen)
    return (time.perf_counter() - start) / STEPS


def seconds_per_round(cohorts) -> float:
    """One private round of every client: a batched cohort, or one cohort per client."""
    start = time.perf_counter()
    for f in cohorts:
        gens = [torch.Generator().manual_seed(c) for c in range(f.size)]
        for batch in f.batches(BATCH, COHORT_STEPS, gens):
            f.sgd_step(batch, 0.01)
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    figures: dict[str, float] = {}
    for name, model in MODELS.items():
        plain, private = objective(model, False), objective(model, True)
        d = plain.x.shape[1]
        best = {"plain": float("inf"), "dp": float("inf"), "noise": float("inf")}
        for _ in range(REPEATS):  # alternate, keep the fastest
            best["plain"] = min(best["plain"], seconds_per_step(plain))
            best["dp"] = min(best["dp"], seconds_per_step(private))
            best["noise"] = min(best["noise"], seconds_per_draw(d))
        figures[f"{name}_plain_ms"] = round(1e3 * best["plain"], 3)
        figures[f"{name}_dp_ms"] = round(1e3 * best["dp"], 3)
        figures[f"dp_vs_plain_{name}"] = round(best["dp"] / best["plain"], 3)
        figures[f"noise_vs_plain_{name}"] = round(best["noise"] / best["plain"], 3)
        print(
            f"{name}: plain {1e3 * best['plain']:.3f} ms/step, DP-SGD {1e3 * best['dp']:.3f}"
            f" ms/step, ratio {best['dp'] / best['plain']:.2f}; its {d:,} Gaussian numbers"
            f" alone {1e3 * best['noise']:.3f} ms ({best['noise'] / best['plain']:.2f} of a"
            " plain step)"
        )
        clients = range(CLIENTS)
        batched = [objective(model, True, clients, vectorize=True, clients=CLIENTS)]
        alone = [objective(model, True, (c,), clients=CLIENTS) for c in clients]
        rounds = {"vectorized": float("inf"), "sequential": float("inf")}
        for _ in range(3):
            rounds["vectorized"] = min(rounds["vectorized"], seconds_per_round(batched))
            rounds["sequential"] = min(rounds["sequential"], seconds_per_round(alone))
        ratio = rounds["vectorized"] / rounds["sequential"]
        figures[f"dp_round_vectorized_vs_sequential_{name}"] = round(ratio, 3)
        print(
            f"{name}: a private round of {CLIENTS} clients: vectorized"
            f" {rounds['vectorized']:.3f} s, one by one {rounds['sequential']:.3f} s,"
            f" ratio {ratio:.2f}"
        )
    figures["machine"] = platform.machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dp_overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k.startswith(("dp_", "noise_"))}))


if __name__ == "__main__":
    main()
