"""The adapter-drift attack with a finished run's final adapter weights, on training inputs the
run trained on (seen), training inputs it never reached (unseen: the same distribution) and
the test inputs. Seen over unseen is what a holder of the adapters reads of the training
labels beyond what they predict of any input like them; the in-run held-out measure uses the
test split, which on SST-2 differs in kind (whole sentences; the training split is mostly
phrases), so its gap mixes that shift in. Scored against the true labels, per adapter set,
with the gap's standard error (the two AUCs' Hanley-McNeil errors combined).

python scenarios/p3eft_table/seen_unseen.py RUN_DIR [RUN_DIR ...] [--inputs N]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from fedsim.config import load_scenario
from fedsim.data import load_dataset
from fedsim.privacy import attacks
from fedsim.privacy.backbone import encode_text, trimmed
from fedsim.privacy.split import BackboneHost
from fedsim.results import read_summary
from fedsim.servers.split import LabelParty, backbone_spec, batch_order

CHUNK = 512  # the evaluation's chunk: the same trimmed batches give the same activations


def seen_indices(n: int, batch_size: int, seed: int, steps: int) -> np.ndarray:
    """The training examples the run's first `steps` minibatches held."""
    batches = itertools.islice(batch_order(n, batch_size, seed), steps)
    return np.unique(torch.cat(list(batches)).numpy())


def auc_se(auc: float, labels: np.ndarray) -> float:
    """The standard error of a binary AUC (Hanley and McNeil, 1982)."""
    n1 = int(np.sum(labels == labels.max()))
    n0 = len(labels) - n1
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)
    return float(np.sqrt(var / (n1 * n0)))


def forward(host: BackboneHost, x: dict, slot: str, theta: dict) -> torch.Tensor:
    """forward(x, theta) in chunks cut to their longest input, as the run's hosts compute it."""
    n = len(x["input_ids"])
    parts = [
        host.forward(trimmed({k: v[s : s + CHUNK] for k, v in x.items()}), slot, theta)
        for s in range(0, n, CHUNK)
    ]
    return torch.cat(parts)


def measure(run: Path, inputs: int) -> dict:
    """Accuracy of the loaded weights (against the run's own), and per adapter set the drift
    attack's AUC on seen, unseen and test inputs, and on frozen features of the seen ones."""
    scenario = load_scenario(run / "config.toml")
    p, seed = scenario.algorithm, scenario.seed
    ds = load_dataset(scenario.data, seed)
    vocab = ds.meta["vocab"]
    spec = backbone_spec(p, vocab, seed)
    party = LabelParty(p, spec, ds.num_classes, seed)
    party.load(np.load(run / "final_model.npy"))

    seen = seen_indices(len(ds.y_train), p.batch_size, seed, scenario.rounds)
    unseen = np.setdiff1d(np.arange(len(ds.y_train)), seen)
    rng = np.random.default_rng(0)
    k = min(inputs, len(seen), len(unseen))
    picked = {"seen": rng.choice(seen, k, replace=False), "unseen": rng.choice(unseen, k, False)}
    x = encode_text(spec, vocab, *(ds.x_train[i] for i in picked.values()), ds.x_test)
    inputs_of = dict(zip([*picked, "test"], x, strict=True))
    y_of = {name: ds.y_train[i] for name, i in picked.items()} | {"test": ds.y_test}

    host = BackboneHost(spec)
    zeroed = {
        k: torch.zeros_like(v) if ".lora_B." in k else v.detach()
        for k, v in party.thetas[0].items()
    }
    frozen = {name: forward(host, x, "a0", zeroed) for name, x in inputs_of.items()}
    floor = attacks.leak(attacks.drift_attack(frozen["seen"].numpy()), y_of["seen"])
    sets, hs = [], []
    for i, theta in enumerate(party.thetas):
        theta = {k: v.detach() for k, v in theta.items()}
        h = {name: forward(host, x, f"a{i}", theta) for name, x in inputs_of.items()}
        hs.append(h["test"])
        drift = {
            name: attacks.leak(attacks.drift_attack((h[name] - frozen[name]).numpy()), y_of[name])
            for name in inputs_of
        }
        se = np.hypot(auc_se(drift["seen"], y_of["seen"]), auc_se(drift["unseen"], y_of["unseen"]))
        sets.append(drift | {"floor": floor, "gap_se": float(se)})
    with torch.no_grad():
        predicted = party.predict(party.head(party.features(hs)))
    accuracy = float((predicted == torch.from_numpy(ds.y_test)).float().mean())
    return {
        "accuracy": accuracy,
        "run_accuracy": read_summary(run)["final"]["eval_accuracy"],
        "inputs": k,
        "sets": sets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--inputs", type=int, default=3200, help="seen and unseen inputs each")
    args = parser.parse_args()
    print("| run | set | accuracy % | drift: seen / unseen / test / floor | seen - unseen (2 SE) |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        m = measure(run, args.inputs)
        for i, s in enumerate(m["sets"]):
            print(
                f"| {run} | {i} | {100 * m['accuracy']:.1f} (run: {100 * m['run_accuracy']:.1f})"
                f" | {s['seen']:.3f} / {s['unseen']:.3f} / {s['test']:.3f} / {s['floor']:.3f}"
                f" | {s['seen'] - s['unseen']:+.3f} ({2 * s['gap_se']:.3f}) |"
            )


if __name__ == "__main__":
    main()
