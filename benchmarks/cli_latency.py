"""CLI latency: how long `fedsim --help`, `fedsim list` and a refused scenario take, against
`flwr --help` as the baseline (and `python -c pass`, the interpreter's own start).

Each command runs in a fresh process, as a user types it (the console scripts next to this
Python), `--repeats` times after one untimed run (the disk cache warm); each figure is the
median wall time. The refusal is `fedsim run scenarios/quickstart.toml --set seed=-1`: it must
exit with code 2 and one line naming the key. Target (issue 40, part 8): `help_s` and
`refusal_s` at most 1.5 s, about `flwr --help`'s time; the CLI loads torch, flwr and the
report stack only in the commands that run something.

    python benchmarks/cli_latency.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REPEATS, TARGET_S = 5, 1.5
REFUSAL = ["run", "scenarios/quickstart.toml", "--set", "seed=-1"]
REFUSAL_LINE = "fedsim: error: scenario.seed: -1 is invalid"


def script(name: str) -> list[str]:
    """A console script of this environment (`python -m` where it is not installed)."""
    path = BIN / name
    return [str(path)] if path.is_file() else [sys.executable, "-m", name]


def seconds(argv: list[str], rc: int = 0) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != rc:
        raise SystemExit(f"{' '.join(argv)}: exit code {done.returncode}, not {rc}\n{done.stderr}")
    return took, done


def median_s(argv: list[str], repeats: int, rc: int = 0) -> float:
    seconds(argv, rc)  # untimed: the files in the disk cache
    return statistics.median(seconds(argv, rc)[0] for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"default {REPEATS}")
    args = ap.parse_args()
    fedsim = script("fedsim")
    _, refused = seconds(fedsim + REFUSAL, rc=2)
    lines = refused.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith(REFUSAL_LINE):
        raise SystemExit(f"the refusal is not one line {REFUSAL_LINE!r}...: {refused.stderr!r}")
    figures: dict[str, float | int | str] = {}
    commands = {
        "python_startup_s": ([sys.executable, "-c", "pass"], 0),
        "flwr_help_s": (script("flwr") + ["--help"], 0),
        "help_s": (fedsim + ["--help"], 0),
        "refusal_s": (fedsim + REFUSAL, 2),
        "list_s": (fedsim + ["list"], 0),
    }
    for key, (argv, rc) in commands.items():
        figures[key] = round(median_s(argv, args.repeats, rc), 3)
    base = figures["flwr_help_s"]
    print(f"{'command':50s} {'median s':>8s} {'/ flwr --help':>13s}")
    for key, (argv, _) in commands.items():
        shown = " ".join([Path(argv[0]).name, *argv[1:]])
        print(f"{shown:50s} {figures[key]:8.3f} {figures[key] / base:13.2f}")
    for key in ("help_s", "refusal_s", "list_s"):
        figures[key.removesuffix("_s") + "_vs_flwr_help"] = round(figures[key] / base, 2)
    figures["target_s"] = TARGET_S
    figures["meets_target"] = max(figures["help_s"], figures["refusal_s"]) <= TARGET_S
    figures |= {"repeats": args.repeats, "cpus": os.cpu_count(), "machine": platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_latency.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
