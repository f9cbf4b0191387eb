"""fedsim's runs against reference.py's: rel_dist_to_opt round by round, same (split, p).

    .venv/bin/python scenarios/proxskip_w8a/check.py runs/sweeps/w8a-fedsim runs/sweeps/w8a-ref

Both draw K ~ Geometric(p) from fedsim's `round_length(p, seed, round)` and start from
fedsim's x0, so their rounds are the same iterations; what differs is fedsim's float32
arithmetic (and any bug). Prints a Markdown table: rounds to eps = 1e-6 in each, the
relative distances at the last round both have (the reference stops at 1e-6), and the
largest |fedsim / reference - 1| over the rounds both have.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import BASE, reach, runs  # noqa: E402

TOL = 1e-6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fedsim_sweep", type=Path)
    ap.add_argument("reference", type=Path)
    args = ap.parse_args()
    clients = BASE["data"]["num_clients"]
    ref = {(s, p): m for s, pms in runs(args.reference).items() for p, m in pms}
    head = [
        "split",
        "p",
        "fedsim rounds run",
        f"rounds to {TOL:.0e}: fedsim",
        "reference",
        "last common round",
        "rel_dist there: fedsim",
        "reference",
        "max rel. deviation",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for split, pms in runs(args.fedsim_sweep).items():
        for p, fed in pms:
            mine = {r["round"]: r["rel_dist_to_opt"] for r in ref[(split, p)]}
            pairs = [
                (r["round"], r["rel_dist_to_opt"], mine[r["round"]])
                for r in fed
                if r["round"] in mine
            ]
            worst = max(abs(f / r - 1) for _, f, r in pairs)
            last, last_f, last_r = pairs[-1]
            hits = [reach(m, TOL, clients)[0] for m in (fed, ref[(split, p)])]
            cells = [split, f"{p:g}", str(len(fed))]
            cells += [f"{h:.0f}" if h < float("inf") else "-" for h in hits]
            cells += [str(last), f"{last_f:.4e}", f"{last_r:.4e}", f"{worst:.1e}"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
