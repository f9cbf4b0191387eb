"""The P3EFT table: final test accuracy and leak (the worst attack AUC over training, from
each host's view) per method, task and setting, shaped like the paper's; then each family of
attacks' worst value, the worst on training inputs, held-out inputs and frozen features, and
each seed's accuracy and worst leak, per method and setting.

python scenarios/p3eft_table/table.py runs/sweeps/p3eft_table [MORE_SWEEP_DIRS ...]
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

METHODS = ("head_only", "vanilla", "dc", "p3eft")
ATTACKS = {  # a family of attacks: the prefixes of its summary keys
    "gradients alone": ("leak_grad_",),
    "activations alone": ("leak_act_", "kmeans_act"),
    "pairing": ("leak_pairing_",),
    "span": ("leak_span_",),
    "set difference": ("leak_actdiff_",),
    "update difference": ("leak_update_",),
    "adapter drift": ("leak_drift_",),
}
MEASURES = {  # the worst attack on: the training inputs, held-out inputs, frozen features
    "training": "leak",
    "held-out": "heldout_leak",
    "frozen floor": "floor_leak",
}


def runs(sweep: Path):
    """(method row, column, seed, summary) of every run of one sweep directory."""
    with open(sweep / "sweep.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r.get("status", "ok") != "ok":  # pending or failed: no summary to read
                continue
            run = sweep / "points" / f"{int(r['point']):03d}" / f"seed{r['seed']}"
            summary = json.loads((run / "summary.json").read_text())
            eps = r.get("algorithm.label_epsilon") or None
            method = r["algorithm.method"] + (f", label DP eps = {float(eps):g}" if eps else "")
            column = (int(r.get("data.options.classes") or 2), int(r["algorithm.hosts"]))
            yield method, column, int(r["seed"]), summary


def order(method: str) -> tuple[int, str]:
    return METHODS.index(method.split(",")[0]), method


def main() -> None:
    cells: dict[tuple, dict[int, tuple[float, float]]] = defaultdict(dict)
    families: dict[tuple, dict[str, float]] = defaultdict(dict)
    measures: dict[tuple, dict[str, float]] = defaultdict(dict)
    for sweep in sys.argv[1:]:
        for method, column, seed, s in runs(Path(sweep)):
            cells[(method, column)][seed] = (s["final"]["eval_accuracy"], s["leak"])
            worst = families[(method, column)]
            for family, prefixes in ATTACKS.items():
                values = [v for k, v in s.items() if k.startswith(prefixes)]
                if values:
                    worst[family] = max(worst.get(family, 0.0), *values)
            for name, key in MEASURES.items():
                if key in s:
                    seen = measures[(method, column)]
                    seen[name] = max(seen.get(name, 0.0), s[key])
    columns = sorted({c for _, c in cells})
    names = {c: f"{c[0]}-class, {'two' if c[1] == 1 else 'multi'}-party" for c in columns}
    methods = sorted({m for m, _ in cells}, key=order)
    print("| method | " + " | ".join(names.values()) + " |")
    print("|---|" + "---|" * len(columns))
    for m in methods:
        out = []
        for c in columns:
            seeds = cells.get((m, c), {}).values()
            if not seeds:
                out.append("-")
                continue
            acc, leak = sum(a for a, _ in seeds) / len(seeds), max(v for _, v in seeds)
            out.append(f"{100 * acc:.1f} / {100 * leak:.1f}")
        print(f"| {m} | " + " | ".join(out) + " |")
    print("\naccuracy % (mean over seeds) / leak % (max(AUC, 1 - AUC) of the strongest attack,")
    print("worst checkpoint and seed)")
    print("\n| method | setting | " + " | ".join(ATTACKS) + " |")
    print("|---|---|" + "---|" * len(ATTACKS))
    for m in methods:
        for c in columns:
            if (m, c) in families:
                worst = families[(m, c)]
                row = [f"{worst[a]:.3f}" if a in worst else "-" for a in ATTACKS]
                print(f"| {m} | {names[c]} | " + " | ".join(row) + " |")
    print("\n| method | setting | " + " | ".join(MEASURES) + " |")
    print("|---|---|" + "---|" * len(MEASURES))
    for m in methods:
        for c in columns:
            seen = measures.get((m, c), {})
            if len(seen) > 1:  # runs from before the held-out and floor measures have one
                row = [f"{seen[n]:.3f}" if n in seen else "-" for n in MEASURES]
                print(f"| {m} | {names[c]} | " + " | ".join(row) + " |")
    print("\nthe worst attack on the training inputs, on held-out inputs (what any holder of")
    print("the adapters learns) and on frozen-backbone features (the floor)")
    seeds = sorted({s for by_seed in cells.values() for s in by_seed})
    print("\n| method | setting | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|" + "---|" * len(seeds))
    for m in methods:
        for c in columns:
            by_seed = cells.get((m, c), {})
            if by_seed:
                row = [
                    f"{100 * by_seed[s][0]:.1f} / {by_seed[s][1]:.3f}" if s in by_seed else "-"
                    for s in seeds
                ]
                print(f"| {m} | {names[c]} | " + " | ".join(row) + " |")
    print("\naccuracy % / worst leak of each seed's run")


if __name__ == "__main__":
    main()
