"""Engine overhead: the same FedAvg workload as a bare PyTorch loop, in-process (clients one
by one, and as vectorized cohorts), and on Ray.

Workloads: 100 clients with a ~1M-parameter MLP, 20 and 100 clients with a ~10k-parameter
MLP, 10 local SGD steps of batch 32 each. Every engine runs the same data, batches and
server-side evaluation; we report seconds per client update (a round's wall time over its
clients, first round excluded as warm-up) and the ratio to bare PyTorch. Bare and
in-process runs alternate in this process (fastest round over the repeats); `simulation`
is Flower's Ray engine on the same scenario. `--memory` also runs one round of 1,000
clients of the 1M model as vectorized cohorts in a fresh process and reports its peak RSS
and the chunk size the memory budget chose.

`--device DEV` measures instead the in-process engine on DEV (`cuda` on a GPU machine): clients
one by one against vectorized cohorts, for the 10k and the 1M model on synthetic data (200
examples per client), at each of `--clients` (default 100 and 1,000 clients), three rounds each
(the first a warm-up); key `vectorized_vs_sequential_DEV_MODEL_CLIENTS`, sequential over
vectorized seconds per update, in results/engine_overhead_DEV.json unless `--out` says where.

    python benchmarks/engine_overhead.py [--quick] [--no-simulation] [--memory] [--out PATH]
    python benchmarks/engine_overhead.py --device cuda [--clients 100,1000] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fedsim.config import Scenario, load_scenario
from fedsim.data import client_data, load_dataset
from fedsim.models import build_model, loss_fn
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.seeding import torch_generator

RESULTS = Path(__file__).parent / "results"

WORKLOADS = {
    "1m": {  # 256 -> 1024 -> 768 -> 10: 1,058,058 parameters
        "data": {
            "dataset": "synthetic",
            "num_clients": 100,
            "partitioner": "natural",
            "test_fraction": 0.05,
            "options": {"dim": 256, "min_samples": 200, "max_samples": 200},
        },
        "model": {"name": "mlp", "hidden": [1024, 768]},
        "rounds": 5,
    },
    "10k": {  # digits 64 -> 128 -> 10: 9,610 parameters
        "data": {"dataset": "digits", "num_clients": 20, "partitioner": "iid"},
        "model": {"name": "mlp", "hidden": [128]},
        "rounds": 12,
    },
    "10k_100": {  # the same model, 100 clients (about 14 examples each: full batches)
        "data": {"dataset": "digits", "num_clients": 100, "partitioner": "iid"},
        "model": {"name": "mlp", "hidden": [128]},
        "rounds": 8,
    },
}
# name -> execution: "vectorized" is the default ("auto"): batched cohorts, with vmap where it
# pays and on a CPU the 1M model's clients side by side on worker threads (fedsim/models.py:
# VMAP_PARAMS)
ENGINES = {"inprocess": "sequential", "vectorized": "auto"}
ALGORITHM = {"name": "local_sgd", "local_steps": 10, "batch_size": 32, "client_lr": 0.05}
DEVICE_MODELS = {"10k": (64, [128]), "1m": (256, [1024, 768])}  # input dim, hidden widths


def scenario(
    name: str, runtime: str = "inprocess", rounds: int | None = None, execution: str = "auto"
) -> Scenario:
    w = WORKLOADS[name]
    raw = {
        "name": f"bench-{name}",
        "seed": 0,
        "rounds": rounds or w["rounds"],
        "runtime": runtime,
        "execution": execution,
        "data": w["data"],
        "model": w["model"],
        "algorithm": ALGORITHM,
    }
    return load_scenario(raw)


def bare_pytorch(s: Scenario) -> list[float]:
    """Idiomatic PyTorch FedAvg: load_state_dict, SGD steps, state-dict weighted average."""
    ds = load_dataset(s.data, s.seed)
    model = build_model(s.model, ds.x_train.shape[1], ds.num_classes, s.seed)
    lossf = loss_fn(ds.num_classes)
    parts = [
        tuple(torch.as_tensor(a) for a in client_data(s.data, s.seed, i)[:2])
        for i in range(s.data.num_clients)
    ]
    test_x, test_y = torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test)
    opt = torch.optim.SGD(model.parameters(), lr=s.algorithm.client_lr)
    global_sd = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for rnd in range(1, s.rounds + 1):
        start = time.perf_counter()
        acc = {k: torch.zeros_like(v) for k, v in global_sd.items()}
        total = 0.0
        for pid, (x, y) in enumerate(parts):
            model.load_state_dict(global_sd)
            gen, n = torch_generator(s.seed, rnd, pid), len(y)
            perm, pos = torch.randperm(n, generator=gen), 0
            for _ in range(s.algorithm.local_steps):
                if pos >= n:
                    perm, pos = torch.randperm(n, generator=gen), 0
                idx = perm[pos : pos + s.algorithm.batch_size]
                pos += s.algorithm.batch_size
                opt.zero_grad()
                lossf(model(x[idx]), y[idx]).backward()
                opt.step()
            for k, v in model.state_dict().items():
                acc[k].add_(global_sd[k] - v, alpha=float(n))
            total += n
        for k in global_sd:
            global_sd[k] -= acc[k] / total
        with torch.no_grad():
            model.load_state_dict(global_sd)
            out = model(test_x)
            _ = float(lossf(out, test_y)), float((out.argmax(-1) == test_y).float().mean())
        times.append(time.perf_counter() - start)
    return times


def engine(s: Scenario) -> list[float]:
    """Per-round wall times of a fedsim run (from wall_s in metrics.jsonl)."""
    with tempfile.TemporaryDirectory() as tmp:
        launch(s, tmp)
        walls = [r["wall_s"] for r in read_metrics(tmp)]
    return [b - a for a, b in zip([0.0, *walls], walls, strict=False)]


def per_update(times: list[float], clients: int) -> float:
    """Fastest round's seconds per client update, the first (warm-up) round left out.

    This shared 2-core machine only ever adds time (other tenants), so the fastest
    round is the least noisy estimate of what each engine costs (as `timeit` does).
    """
    return min(times[1:]) / clients


def measure(name: str, repeats: int) -> dict[str, float]:
    """Best of `repeats` for bare PyTorch and the in-process engines, alternating so drift
    hits all of them."""
    s = scenario(name)
    best = {"bare": float("inf")} | {e: float("inf") for e in ENGINES}
    for _ in range(repeats):
        best["bare"] = min(best["bare"], per_update(bare_pytorch(s), s.data.num_clients))
        for eng, execution in ENGINES.items():
            t = per_update(engine(scenario(name, execution=execution)), s.data.num_clients)
            best[eng] = min(best[eng], t)
    return best


def device_scenario(model: str, clients: int, device: str, execution: str) -> Scenario:
    """The device comparison's workload: the model on synthetic data, 200 examples a client."""
    dim, hidden = DEVICE_MODELS[model]
    data = {"dataset": "synthetic", "num_clients": clients, "partitioner": "natural"}
    data |= {"test_fraction": 0.05, "options": {"dim": dim, "min_samples": 200, "max_samples": 200}}
    raw = {"name": f"bench-{model}-{clients}", "seed": 0, "rounds": 3, "checkpoint_every": 0}
    raw |= {"device": device, "execution": execution, "data": data, "algorithm": ALGORITHM}
    return load_scenario(raw | {"model": {"name": "mlp", "hidden": hidden}})


def on_device(device: str, clients: list[int], out: Path) -> None:
    """Seconds per client update on `device`, one by one and as vectorized cohorts, written to
    `out` after each workload (a run stopped at a time limit keeps what it measured)."""
    kind = torch.device(device).type
    name = torch.cuda.get_device_name(device) if kind == "cuda" else "CPU"
    figures: dict[str, float | str] = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {name}"
    }
    for model in DEVICE_MODELS:
        for n in clients:
            best = {
                eng: per_update(engine(device_scenario(model, n, device, execution)), n)
                for eng, execution in {"sequential": "sequential", "vectorized": "auto"}.items()
            }
            ratio = best["sequential"] / best["vectorized"]
            print(
                f"{kind} {model} {n} clients: sequential {1e3 * best['sequential']:.3f},"
                f" vectorized {1e3 * best['vectorized']:.3f} ms/update: {ratio:.2f}x"
            )
            for eng, sec in best.items():
                figures[f"ms_per_update_{eng}_{kind}_{model}_{n}"] = round(1e3 * sec, 3)
            figures[f"vectorized_vs_sequential_{kind}_{model}_{n}"] = round(ratio, 3)
            write(figures, out)


def cohort_memory() -> dict[str, float]:
    """One round of 1,000 clients of the 1M model as vectorized cohorts, in this process."""
    from fedsim.runtime.cohorts import cohort_chunk

    w = WORKLOADS["1m"]
    s = load_scenario(
        {
            "name": "bench-1m-1000",
            "rounds": 1,
            "checkpoint_every": 0,
            "execution": "vectorized",
            "data": w["data"] | {"num_clients": 1000},
            "model": w["model"],
            "algorithm": ALGORITHM,
        }
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        launch(s, tmp)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "cohort_1000_1m_peak_rss_gib": round(peak, 3),
        "cohort_1000_1m_chunk": cohort_chunk(s),
        "cohort_1000_1m_round_s": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat (default five)")
    ap.add_argument("--no-simulation", action="store_true", help="skip Flower's Ray engine")
    ap.add_argument("--memory", action="store_true", help="1,000 clients of the 1M model")
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", help="instead: sequential vs vectorized on this device")
    ap.add_argument("--clients", default="100,1000", help="--device's client counts")
    ap.add_argument("--out", type=Path, help="the JSON's path (default: in results/)")
    args = ap.parse_args()
    if args.memory_only:  # the fresh process of --memory
        print(json.dumps(cohort_memory()))
        return
    if args.device:
        out = args.out or RESULTS / f"engine_overhead_{torch.device(args.device).type}.json"
        on_device(args.device, [int(n) for n in args.clients.split(",")], out)
        return
    seconds = {name: measure(name, 1 if args.quick else 5) for name in WORKLOADS}
    if not args.no_simulation:  # last: Ray leaves threads behind in this process
        for name in ("1m", "10k"):
            sim = scenario(name, runtime="simulation", rounds=3)
            seconds[name]["simulation"] = per_update(engine(sim), sim.data.num_clients)
    figures: dict[str, float | str] = {}
    print(f"{'workload':10s} {'engine':12s} {'ms/update':>10s} {'vs bare':>8s}")
    for name, m in seconds.items():
        for eng, sec in m.items():
            ratio = sec / m["bare"]
            print(f"{name:10s} {eng:12s} {1e3 * sec:10.2f} {ratio:8.2f}x")
            if eng != "bare":
                figures[f"{eng}_vs_bare_{name}"] = round(ratio, 3)
            figures[f"ms_per_update_{eng}_{name}"] = round(1e3 * sec, 3)
    if args.memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-only"], check=True, capture_output=True, text=True
        ).stdout
        figures |= json.loads(out.strip().splitlines()[-1])
    figures["machine"] = f"{platform.machine()} {torch.get_num_threads()} threads, CPU"
    write(figures, args.out or RESULTS / "engine_overhead.json")


def write(figures: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
