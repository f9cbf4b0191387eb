"""The P3EFT table: final test accuracy and leak (the worst attack AUC over training, from
each host's view) per method, task and setting, shaped like the paper's; then each family of
attacks' worst value per method and setting.

python scenarios/p3eft_table/table.py runs/sweeps/p3eft_table
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
}


def main() -> None:
    sweep = Path(sys.argv[1])
    with open(sweep / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple, list] = defaultdict(list)
    families: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        run = sweep / "points" / f"{int(r['point']):03d}" / f"seed{r['seed']}"
        s = json.loads((run / "summary.json").read_text())
        column = (int(r.get("data.options.classes") or 2), int(r["algorithm.hosts"]))
        cells[(r["algorithm.method"], column)].append((s["final"]["eval_accuracy"], s["leak"]))
        worst = families[(r["algorithm.method"], column)]
        for family, prefixes in ATTACKS.items():
            values = [v for k, v in s.items() if k.startswith(prefixes)]
            if values:
                worst[family] = max(worst.get(family, 0.0), *values)
    columns = sorted({c for _, c in cells})
    names = [f"{k}-class, {'two' if h == 1 else 'multi'}-party" for k, h in columns]
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(columns))
    for m in METHODS:
        out = []
        for c in columns:
            runs = cells.get((m, c), [])
            if not runs:
                out.append("-")
                continue
            acc, leak = sum(a for a, _ in runs) / len(runs), max(v for _, v in runs)
            out.append(f"{100 * acc:.1f} / {100 * leak:.1f}")
        print(f"| {m} | " + " | ".join(out) + " |")
    print("\naccuracy % / leak % (max(AUC, 1 - AUC) of the strongest attack, worst checkpoint)")
    print("\n| method | setting | " + " | ".join(ATTACKS) + " |")
    print("|---|---|" + "---|" * len(ATTACKS))
    for m in METHODS:
        for c, name in zip(columns, names, strict=True):
            if (m, c) in families:
                worst = families[(m, c)]
                row = [f"{worst[a]:.3f}" if a in worst else "-" for a in ATTACKS]
                print(f"| {m} | {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
