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
machine only adds time). Target (issue 19): at most 2x. `--device cuda` runs the same on a
GPU (into results/dp_overhead_cuda.json unless `--out` says where); the noise is drawn on the
CPU and moved, as the private step draws it.

    python benchmarks/dp_overhead.py [--device cuda] [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
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


def spec(model: dict, private: bool, clients: int, device: str) -> str:
    raw = {
        "device": device,
        "data": {"dataset": "digits", "num_clients": clients},
        "model": model,
        "algorithm": {"name": "local_sgd", "batch_size": BATCH, "local_steps": STEPS},
    }
    if private:
        raw["privacy"] = {"mechanism": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    return client_spec(load_scenario(raw))


def objective(model: dict, private: bool, device: str, partitions=(0,), vectorize=False, clients=5):
    f = cohort_for(spec(model, private, clients, device), list(partitions), vectorize)
    x0 = torch.nn.utils.parameters_to_vector(f.model.parameters()).detach().cpu().numpy()
    f.bind(f.load([x0] * len(partitions)))
    return f


def now(device: torch.device) -> float:
    """The wall clock, once the device has done the work queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def seconds_per_step(f) -> float:
    gen = torch.Generator().manual_seed(0)
    start = now(f.device)
    for batch in f.batches(BATCH, STEPS, [gen]):
        f.sgd_step(batch, 0.01)
    return (now(f.device) - start) / STEPS


def seconds_per_draw(d: int, device: torch.device) -> float:
    """The private step's noise alone: d standard normals from a torch generator, on the
    device."""
    gen = torch.Generator().manual_seed(0)
    start = now(device)
    for _ in range(STEPS):
        torch.randn(d, generator=gen).to(device)
    return (now(device) - start) / STEPS


def seconds_per_round(cohorts) -> float:
    """One private round of every client: a batched cohort, or one cohort per client."""
    start = now(cohorts[0].device)
    for f in cohorts:
        gens = [torch.Generator().manual_seed(c) for c in range(f.size)]
        for batch in f.batches(BATCH, COHORT_STEPS, gens):
            f.sgd_step(batch, 0.01)
    return now(cohorts[0].device) - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="where the clients run (cpu, cuda)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"default {REPEATS}")
    ap.add_argument("--out", type=Path, help="the JSON's path (default: in results/)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(1)
    figures: dict[str, float | str] = {}
    for name, model in MODELS.items():
        plain, private = objective(model, False, args.device), objective(model, True, args.device)
        d = plain.x.shape[1]
        best = {"plain": float("inf"), "dp": float("inf"), "noise": float("inf")}
        for _ in range(args.repeats):  # alternate, keep the fastest
            best["plain"] = min(best["plain"], seconds_per_step(plain))
            best["dp"] = min(best["dp"], seconds_per_step(private))
            best["noise"] = min(best["noise"], seconds_per_draw(d, device))
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
        batched = [objective(model, True, args.device, clients, vectorize=True, clients=CLIENTS)]
        alone = [objective(model, True, args.device, (c,), clients=CLIENTS) for c in clients]
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
    if device.type != "cpu":
        figures["machine"] += f", {torch.cuda.get_device_name(device)}"
    name = "dp_overhead.json" if device.type == "cpu" else f"dp_overhead_{device.type}.json"
    out = args.out or RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k.startswith(("dp_", "noise_"))}))


if __name__ == "__main__":
    main()
