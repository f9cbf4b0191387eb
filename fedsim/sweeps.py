"""`fedsim sweep SWEEP.toml`: a base scenario crossed with axes and seeds, one run per point.

A sweep file names a base scenario, axes and seeds:

    base = "quickstart.toml"        # relative to the sweep file
    seeds = [0, 1, 2]
    target = { metric = "eval_accuracy", value = 0.9 }   # optional: rounds-to-target
    [[axes]]                        # one key ...
    key = "data.alpha"
    values = [0.1, 1.0]
    [[axes]]                        # ... or several keys zipped: the i-th values go together
    keys = ["algorithm.name", "algorithm.client_lr"]
    values = [["fedavg", 0.3], ["local_sgd", 0.1]]

Axes are crossed with each other. Every (point, seed) scenario is validated before
anything runs. Each run gets its own run directory under SWEEP_DIR/points/; a run with
a summary.json is done and skipped when the sweep is run again, and one with a
checkpoint resumes, so a killed sweep continues where it stopped. A run directory that
holds another scenario (the sweep or its base changed since) is an error before anything
runs, never a silently reused result.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import tomllib
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedsim.config import (
    Scenario,
    ScenarioError,
    check_installed,
    load_scenario,
    parse_scenario_json,
    set_key,
    with_plugins,
)
from fedsim.results import (
    CONFIG,
    ERROR,
    METRICS,
    SUMMARY,
    SWEEP_RECORD,
    create_run_dir,
    read_rows,
    read_summary,
)
from fedsim.tracking import TrackingConfig, replay

# torch, flwr (the runtimes, checkpoints) and the progress bar are imported where points run:
# reading and validating a sweep file (and refusing it) loads none of them.


class Axis(BaseModel):
    """One axis: a key and its values, or keys zipped with rows of values."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    key: str | None = Field(None, description="a scenario key, dotted (e.g. data.alpha)")
    keys: list[str] | None = Field(
        None, description="several keys set together: each value is a list, an item per key"
    )
    values: list[Any] = Field(min_length=1, description="the axis's positions")

    @model_validator(mode="after")
    def _shape(self) -> Axis:
        if (self.key is None) == (self.keys is None):
            raise ValueError("give either key or keys")
        if self.keys is not None:
            bad = [v for v in self.values if not isinstance(v, list) or len(v) != len(self.keys)]
            if bad:
                raise ValueError(f"every value must be a list of {len(self.keys)}: {bad[0]!r}")
        return self

    def settings(self) -> list[dict[str, Any]]:
        """The axis's positions, each a {key: value} dict."""
        if self.key is not None:
            return [{self.key: v} for v in self.values]
        return [dict(zip(self.keys, row, strict=True)) for row in self.values]


class Target(BaseModel):
    """Rounds-to-target: the report gives the first round at which `metric` reaches `value`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metric: str = Field(description="a metric row's key, e.g. eval_accuracy")
    value: float = Field(description="the value to reach")
    mode: str = Field("max", pattern="^(max|min)$", description="max: reach >= value")


class SweepConfig(BaseModel):
    """A sweep file."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("sweep", description="names the sweep: its default runs/sweeps/NAME")
    base: str = Field(description="the base scenario's TOML file, relative to the sweep file")
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="each point runs once per seed"
    )
    runtime: str | None = Field(None, description="every run's runtime (default: the base's)")
    target: Target | None = None
    axes: list[Axis] = Field(
        default_factory=list, description="crossed with each other: one run per point and seed"
    )
    tracking: TrackingConfig | None = Field(
        None, description="default: the base scenario's [tracking]"
    )


def point_dir(sweep_dir: Path, point: int, seed: int) -> Path:
    """The run directory of one (point, seed) of a sweep."""
    return Path(sweep_dir) / "points" / f"{int(point):03d}" / f"seed{seed}"


@dataclass(frozen=True)
class Run:
    """One (point, seed) of a sweep."""

    point: int
    setting: dict[str, Any]
    seed: int
    scenario: Scenario

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting.items()) or "base"

    def directory(self, sweep_dir: Path) -> Path:
        return point_dir(sweep_dir, self.point, self.seed)


def grid(axes: list[Axis]) -> list[dict[str, Any]]:
    """All points: the axes crossed, each axis's keys zipped."""
    points = []
    for combo in itertools.product(*(a.settings() for a in axes)):
        merged: dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        points.append(merged)
    return points


def read_sweep(
    path: Path | str, plugins: list[str] | tuple[str, ...] = ()
) -> tuple[SweepConfig, dict[str, Any]]:
    """The validated sweep file and its base scenario as a raw dict, its plug-ins (and
    `plugins`, relative to the current directory) resolved."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"sweep: {str(path)!r} is not a file")
    try:
        cfg = SweepConfig.model_validate(tomllib.loads(path.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as e:
        first = str(e).splitlines()
        raise ScenarioError(f"sweep: {str(path)!r} is invalid: {' '.join(first[:3])}") from None
    base = path.parent / cfg.base
    if not base.is_file():
        raise ScenarioError(f"sweep.base: {cfg.base!r} is not a file next to the sweep")
    raw = tomllib.loads(base.read_text())
    raw["plugins"] = with_plugins(raw.get("plugins", []), base.parent, plugins)
    return cfg, raw


def plan(cfg: SweepConfig, base: dict[str, Any]) -> list[Run]:
    """Every (point, seed) as a validated scenario; the first bad one stops the sweep."""
    runs = []
    for i, setting in enumerate(grid(cfg.axes)):
        for seed in cfg.seeds:
            raw = json.loads(json.dumps(base))
            for key, value in {**setting, "seed": seed}.items():
                set_key(raw, key, value)
            if cfg.runtime:
                raw["runtime"] = cfg.runtime
            try:
                scenario = load_scenario(raw)
            except ScenarioError as e:
                label = ", ".join(f"{k}={v!r}" for k, v in setting.items())
                raise ScenarioError(f"sweep point {i} ({label}): {e}") from None
            runs.append(Run(i, setting, seed, scenario))
    return runs


def _run_one(scenario_json: str, out: Path, threads: int | None) -> str | None:
    """Run (or resume) one point; a failure is recorded and returned, not raised. `threads`:
    a worker process's share of the cores (None: in the caller's process, whose setting
    stays). The scenario comes as JSON, parsed here after its plug-ins are imported."""
    import torch

    from fedsim.checkpoint import CHECKPOINT
    from fedsim.runtime import launch

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        scenario = parse_scenario_json(scenario_json)
        if (out / CHECKPOINT).is_file():
            launch(scenario, out, resume=True)
        else:
            create_run_dir(out, scenario.to_toml(), overwrite=True)
            launch(scenario, out)
        return None
    except Exception as e:  # a failed point must not stop the others
        with contextlib.suppress(OSError):  # nor a run directory that cannot hold the reason
            out.mkdir(parents=True, exist_ok=True)
            (out / ERROR).write_text(traceback.format_exc())
        return f"{type(e).__name__}: {e}"


def run_sweep(
    path: Path | str,
    sweep_dir: Path | str,
    jobs: int = 1,
    quiet: bool | None = None,
    tracking: TrackingConfig | None = None,
    plugins: list[str] | tuple[str, ...] = (),
) -> list[Run]:
    """Run every pending point of the sweep file into `sweep_dir`; return the runs. Each run
    that ends goes to the trackers (`tracking`, else the sweep file's, else the base
    scenario's) as its own run, grouped by the sweep. `plugins` adds plug-ins to the base
    scenario's (paths relative to the current directory)."""
    cfg, base = read_sweep(path, plugins)
    runs = plan(cfg, base)  # validated before anything is created
    tracking = tracking or cfg.tracking or runs[0].scenario.tracking
    check_installed(tracking)
    sweep_dir = Path(sweep_dir)
    for r in runs:
        saved = r.directory(sweep_dir) / CONFIG
        if saved.is_file() and saved.read_text() != r.scenario.to_toml():
            raise ScenarioError(
                f"sweep point {r.point} ({r.label}) seed {r.seed}: {str(saved.parent)!r} holds"
                " a run of another scenario (the sweep or its base changed); use a new --out"
            )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": cfg.model_dump(exclude_none=True), "points": {}}
    for r in runs:
        record["points"][str(r.point)] = r.setting
    (sweep_dir / SWEEP_RECORD).write_text(json.dumps(record, indent=1))
    pending = [r for r in runs if not (r.directory(sweep_dir) / SUMMARY).is_file()]
    from fedsim.progress import SweepBar  # here: a sweep refused above loads no tqdm

    bar = SweepBar(cfg.name, len(runs), len(runs) - len(pending), quiet)

    def finished(run: Run, error: str | None) -> None:
        if tracking.backends:
            track(run, sweep_dir, cfg.name, tracking)
        bar.finished(describe(run), error)

    if jobs == 1:  # in this process: no worker start-up, and no __main__ guard needed
        for r in pending:
            bar.running([describe(r)])
            finished(r, _run_one(r.scenario.to_json(), r.directory(sweep_dir), None))
    else:  # a script that sweeps with jobs > 1 needs `if __name__ == "__main__":` (spawn)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_one, r.scenario.to_json(), r.directory(sweep_dir), threads): r
                for r in pending
            }
            bar.running([describe(r) for r in pending[:jobs]])
            for future in as_completed(futures):
                finished(futures[future], future.result())
                bar.running([describe(r) for f, r in futures.items() if not f.done()][:jobs])
    bar.close()
    return runs


def describe(run: Run) -> str:
    return f"point {run.point} ({run.label}) seed {run.seed}"


def track(run: Run, sweep_dir: Path, name: str, tracking: TrackingConfig) -> None:
    """Log a finished (or failed) point to the trackers: its own run, grouped by the sweep."""
    out = run.directory(sweep_dir)
    summary = read_summary(out) if (out / SUMMARY).is_file() else None
    tags = {"sweep": name, "point": str(run.point), "seed": str(run.seed), "setting": run.label}
    replay(
        out,
        run.scenario.to_dict(),
        tracking,
        read_rows(out / METRICS),
        summary,
        experiment=name,
        tags=tags,
    )
