"""P3EFT's overhead: time per training step of multi-party P3EFT (n = 2 adapter sets, m = 2
shards, four hosts) against vanilla split LoRA (one adapter, plain backprop, one host), both
through the same label party and the in-process Flower grid, batch 32, on tiny-bert and on
the pretrained all-MiniLM-L6-v2 (the `minilm` extra). The batch is cut to its longest sentence,
as the runtime cuts each training batch.

The protocol's inherent cost is the ratio of passes through the backbone: a forward call is
one forward pass, a backprop call (stateless: it recomputes the forward) is a forward and a
backward pass, so P3EFT needs n + 2 n m = 10 passes per step and vanilla 1 + 2 = 3. The two
methods alternate in this process; each figure is the fastest of several repeats.
`--device cuda` puts the hosts' backbone on a GPU (the label party stays on the CPU), into
results/p3eft_overhead_cuda.json unless `--out` says where; `--backbone` picks the backbones.

    python benchmarks/p3eft_overhead.py [--device cuda] [--backbone tiny-bert] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fedsim.config import load_scenario
from fedsim.data import load_dataset
from fedsim.privacy.backbone import BackboneSpec, encode_text, trimmed, words
from fedsim.registry import load_ref
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.host_views import HostViews
from fedsim.servers.split import Hosts, LabelParty

RESULTS = Path(__file__).parent / "results"
STEPS, BATCH = 20, 32
BACKBONES = {"tiny-bert": ("", 5), "sentence-transformers/all-MiniLM-L6-v2": ("_minilm", 3)}
HOSTS = {"vanilla": 1, "p3eft": 4}


def setup(method: str, backbone: str, device: str):
    s = load_scenario(
        {
            "device": device,
            "data": {"dataset": "sentences"},
            "algorithm": {
                "name": "split_lora",
                "method": method,
                "hosts": HOSTS[method],
                "rank": 16,
                "backbone": backbone,
            },
        }
    )
    p, ds = s.algorithm, load_dataset(s.data, s.seed)
    spec = BackboneSpec(
        p.backbone, len(words(ds.meta["vocab"])), s.seed, p.adapters, p.rank, p.lora_alpha
    )
    grid = InProcessGrid(load_ref("fedsim.clients.app:app"), p.hosts)
    hosts = Hosts(grid, list(grid.get_node_ids()), spec, p.shards, p.rotate, s.device)
    x = trimmed(
        {k: v[:BATCH] for k, v in encode_text(spec, ds.meta["vocab"], ds.x_train)[0].items()}
    )
    y = torch.from_numpy(ds.y_train[:BATCH])
    return LabelParty(p, spec, ds.num_classes, s.seed), hosts, x, y, spec


def seconds_per_step(party: LabelParty, hosts: Hosts, x: dict, y: torch.Tensor, spec) -> float:
    views = HostViews(spec)  # records the calls; the attacks are not run here
    start = time.perf_counter()
    for t in range(STEPS):
        party.step(hosts, t, x, y, views)
    return (time.perf_counter() - start) / STEPS


def measure(backbone: str, repeats: int, device: str) -> dict[str, float]:
    """Fastest seconds per step of each method, alternating."""
    runs = {m: setup(m, backbone, device) for m in HOSTS}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for m, run in runs.items():
            best[m] = min(best[m], seconds_per_step(*run))
    calls = {m: run[1].calls / (repeats * STEPS) for m, run in runs.items()}  # per step
    assert calls == {"vanilla": 2, "p3eft": N + NM}, calls
    return best


N, NM = 2, 4  # P3EFT's forward and backprop calls per step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="where the hosts run (cpu, cuda)")
    ap.add_argument("--backbone", action="append", choices=list(BACKBONES), help="default: all")
    ap.add_argument("--out", type=Path, help="the JSON's path (default: in results/)")
    args = ap.parse_args()
    kind = torch.device(args.device).type
    torch.set_num_threads(1)
    figures: dict[str, float | str] = {"protocol_pass_ratio": round((N + 2 * NM) / (1 + 2), 3)}
    for backbone in args.backbone or BACKBONES:
        suffix, repeats = BACKBONES[backbone]
        best = measure(backbone, repeats, args.device)
        figures |= {
            f"vanilla_ms{suffix}": round(1e3 * best["vanilla"], 3),
            f"p3eft_ms{suffix}": round(1e3 * best["p3eft"], 3),
            f"p3eft_vs_vanilla_step{suffix}": round(best["p3eft"] / best["vanilla"], 3),
        }
        print(
            f"{backbone}: vanilla {1e3 * best['vanilla']:.1f} ms/step, P3EFT"
            f" {1e3 * best['p3eft']:.1f} ms/step: ratio {best['p3eft'] / best['vanilla']:.3f}"
            f" (passes: {figures['protocol_pass_ratio']})"
        )
    figures["machine"] = platform.machine()
    if kind != "cpu":
        figures["machine"] += f", {torch.cuda.get_device_name(args.device)}"
    name = "p3eft_overhead.json" if kind == "cpu" else f"p3eft_overhead_{kind}.json"
    out = args.out or RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
