"""Run directories: config.toml, metrics.jsonl (one JSON object per round), summary.json.

A run directory is created only after the scenario validated; rows are
appended and flushed as rounds complete, so a crashed run keeps them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import RunFailed as RunFailed  # re-exported: defined light for the CLI

ROW_KEYS = (
    "round",
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "bytes_up",
    "bytes_down",
    "grad_evals",
    "sim_time_s",
    "wall_s",
    "clients",
)
METRICS, SUMMARY, CONFIG, MODEL = "metrics.jsonl", "summary.json", "config.toml", "final_model.npy"
SWEEP_RECORD = "sweep.json"  # a sweep directory's record of its points
CLIENTS = "clients.jsonl"  # one row per client per round: the per-client breakdown
ERROR = "error.txt"  # why a run stopped early (a client's traceback, ...)


def create_run_dir(path: Path, config_toml: str, overwrite: bool = False) -> Path:
    """Make the run directory and write the resolved scenario into it."""
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"out: {str(path)!r} already exists (pass --overwrite)")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / CONFIG).write_text(config_toml)
    return path


class MetricsWriter:
    """Appends round rows to metrics.jsonl and writes the summary and final model.

    Resuming after round r keeps the rows of rounds 1..r and drops any later (or torn) ones.
    """

    def __init__(self, path: Path | str, resume_after: int = 0) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for name in (METRICS, CLIENTS):
            kept = [r for r in read_rows(self.path / name) if r["round"] <= resume_after]
            (self.path / name).write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.rows = read_rows(self.path / METRICS)

    def append(self, row: dict[str, Any], clients: list[dict[str, Any]] = ()) -> None:
        """A round's row, and its per-client rows."""
        if clients:
            with open(self.path / CLIENTS, "a") as f:
                f.writelines(json.dumps(c) + "\n" for c in clients)
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)

    def finish(self, summary: dict[str, Any], x: np.ndarray) -> None:
        np.save(self.path / MODEL, x)
        (self.path / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def read_metrics(path: Path | str, name: str = METRICS) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (or clients.jsonl)."""
    with open(Path(path) / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_rows(file: Path) -> list[dict[str, Any]]:
    """Complete rows of a metrics file that may not exist or may end in a torn line."""
    if not file.is_file():
        return []
    rows = []
    for line in file.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def read_summary(path: Path | str) -> dict[str, Any]:
    return json.loads((Path(path) / SUMMARY).read_text())


def summarize(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Final and best metrics plus totals over the run."""
    last = rows[-1]
    out: dict[str, Any] = {"rounds": len(rows), "final": last}
    if "eval_accuracy" in last:
        out["best_eval_accuracy"] = max(r["eval_accuracy"] for r in rows)
    for key in ("bytes_up", "bytes_down", "grad_evals"):
        out[f"total_{key}"] = sum(r[key] for r in rows)
    out["sim_time_s"], out["wall_s"] = last["sim_time_s"], last["wall_s"]
    return {**out, **extra}
