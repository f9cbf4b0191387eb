"""fedsim from Python: `run`, `resume` and `sweep` return results you can work with; the CLI
is a thin layer over them.

    import fedsim
    result = fedsim.run("scenarios/quickstart.toml", rounds=5, algorithm__client_lr=0.1)
    result.metrics            # a pandas DataFrame, one row per round
    result.summary["final"]   # summary.json
    result.module()           # the scenario's model holding the final parameters

A scenario is a TOML path, a dict or a `Scenario`; keyword overrides name keys with `__`
for `.` (or pass `overrides={"algorithm.client_lr": 0.1}` or ["algorithm.client_lr=0.1"]).
Bad input raises `ScenarioError` with the one line the CLI prints, before any run
directory exists; a run that stops early raises `RunFailed`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from fedsim.config import (
    Scenario,
    ScenarioError,
    check_installed,
    load_scenario,
)
from fedsim.data import load_dataset
from fedsim.method import FederatedMethod
from fedsim.models import bind, build_model
from fedsim.results import (
    CLIENTS,
    CONFIG,
    METRICS,
    MODEL,
    MetricsWriter,
    RunFailed,
    create_run_dir,
    read_rows,
    read_summary,
)
from fedsim.tracking import MODULES, Trackers, TrackingConfig

# torch, pandas, flwr (the runtimes, checkpoints) and the report stack are imported where a
# run, a sweep or a result needs them: a scenario refused at load never loads them.
if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

__all__ = ["RunFailed", "RunResult", "ScenarioError", "SweepResult", "resume", "run", "sweep"]
ScenarioLike = str | Path | Mapping[str, Any] | Scenario
Overrides = Mapping[str, Any] | Iterable[str]


@dataclass(frozen=True)
class RunResult:
    """A finished run, read from its run directory."""

    run_dir: Path
    scenario: Scenario
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path | str) -> RunResult:
        run_dir = Path(run_dir)
        scenario = load_scenario(run_dir / CONFIG)
        return cls(run_dir, scenario, read_rows(run_dir / METRICS), read_summary(run_dir))

    @property
    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl: one row per round."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def clients(self) -> pd.DataFrame:
        """clients.jsonl: one row per client per round (fate, grad evals, time)."""
        import pandas as pd

        return pd.DataFrame(read_rows(self.run_dir / CLIENTS))

    def model(self) -> torch.Tensor:
        """The final model as one flat float32 vector (split learning: the head, then each
        adapter set)."""
        import torch

        return torch.from_numpy(np.load(self.run_dir / MODEL))

    def module(self) -> nn.Module:
        """The scenario's model holding the final parameters (and averaged running statistics;
        the initial ones where they stayed on the clients) in eval mode (`state_dict()` for its
        tensors)."""
        if not isinstance(self.scenario.method, FederatedMethod):
            raise ValueError("a split-learning run keeps its adapters only: use model()")
        s = self.scenario
        ds = load_dataset(s.data, s.seed)
        module = build_model(s.model, ds.x_train.shape[1], ds.num_classes, s.seed)
        bind(module, self.model().clone())
        return module.eval()


@dataclass(frozen=True)
class SweepResult:
    """A sweep directory: one row per (point, seed) run and the means over seeds."""

    sweep_dir: Path
    rows: list[dict[str, Any]]
    means: list[dict[str, Any]]
    report: Path

    @property
    def table(self) -> pd.DataFrame:
        """sweep.csv: one row per run."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    @property
    def mean_table(self) -> pd.DataFrame:
        """sweep_mean.csv: one row per point, mean and std over its seeds."""
        import pandas as pd

        return pd.DataFrame(self.means)

    def run(self, point: int, seed: int) -> RunResult:
        from fedsim.sweeps import point_dir

        return RunResult.read(point_dir(self.sweep_dir, point, seed))


def scenario_of(
    source: ScenarioLike, overrides: Overrides = (), plugins: Iterable[str] = (), **keys: Any
) -> Scenario:
    """A validated scenario from a path, dict or Scenario, with overrides applied and
    `plugins` (module names, or paths relative to the current directory) added."""
    values = {k.replace("__", "."): v for k, v in keys.items()}
    if isinstance(overrides, Mapping):
        values, overrides = {**overrides, **values}, ()
    if isinstance(source, Scenario):
        source = source.to_dict()
    raw = source if isinstance(source, str | Path) else dict(source)
    scenario = load_scenario(raw, list(overrides), values, list(plugins))
    check_installed(scenario.tracking)
    return scenario


def run(
    scenario: ScenarioLike,
    *,
    out: Path | str | None = None,
    overwrite: bool = False,
    overrides: Overrides = (),
    track: Iterable[str] | None = None,
    quiet: bool | None = None,
    federation: str | None = None,
    server_dir: Path | str | None = None,
    plugins: Iterable[str] = (),
    **keys: Any,
) -> RunResult:
    """Run a scenario into `out` (default runs/NAME-TIMESTAMP) and return its result.
    `track` adds tracker backends ("tensorboard", "mlflow", "wandb"); `quiet` hides the
    progress bar (default: shown when stderr is a terminal); `federation` and `server_dir`
    are the deployment runtime's (see `fedsim run --help`); `plugins` adds plug-ins (module
    names, or .py files and package folders relative to the current directory)."""
    s = scenario_of(scenario, overrides, plugins, **keys)
    if track:
        s = scenario_of(s, tracking__backends=[*s.tracking.backends, *track])
    if s.runtime == "deployment":
        from fedsim.runtime.deployment import check_connection

        try:
            check_connection(federation)
        except ValueError as e:
            raise ScenarioError(str(e)) from None
    out = Path(out or f"runs/{s.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        create_run_dir(out, s.to_toml(), overwrite=overwrite)
    except FileExistsError as e:
        raise ScenarioError(str(e)) from None
    return _watch(s, out, 0, quiet, federation=federation, server_dir=server_dir)


def resume(
    run_dir: Path | str, *, quiet: bool | None = None, federation: str | None = None
) -> RunResult:
    """Continue a killed run from its last checkpoint, with its own resolved scenario."""
    out = Path(run_dir)
    if not (out / CONFIG).is_file():
        raise ScenarioError(f"resume: {str(out)!r} is not a run directory (no {CONFIG})")
    s = load_scenario(out / CONFIG)
    method, runtime = s.method, s.runtime
    if s.system.policy == "fedbuff":
        raise ScenarioError("resume: system.policy 'fedbuff' runs keep no checkpoints")
    if runtime not in method.supports.resume:
        raise ScenarioError(
            f"resume: algorithm.name {method.name!r} cannot resume on runtime {runtime!r}"
            f" (resumable on: {sorted(method.supports.resume) or 'none'})"
        )
    check_installed(s.tracking)
    from fedsim.checkpoint import CheckpointError, load_checkpoint

    try:
        meta, _ = load_checkpoint(out, s.to_json())  # a corrupt or foreign one stops here
    except CheckpointError as e:
        raise ScenarioError(str(e)) from None
    MetricsWriter(out, resume_after=meta["round"])  # rows after the checkpoint go now
    return _watch(s, out, meta["round"], quiet, resume=True, federation=federation)


def _watch(s: Scenario, out: Path, done: int, quiet: bool | None, **launch_args) -> RunResult:
    """Launch the run while its rows go to the progress bar and the trackers."""
    from fedsim.progress import Follow, RunBar
    from fedsim.runtime import launch

    bar = RunBar(s.name, s.rounds, done, quiet)
    trackers = Trackers(out, s.to_dict(), s.tracking) if s.tracking.backends else None

    def on_row(row: dict[str, Any]) -> None:
        bar(row)
        if trackers:
            trackers.log(row)

    follow = Follow(out, on_row, after=done)
    follow.start()
    summary = None
    try:
        launch(s, out, **launch_args)
        follow.stop()
        summary = read_summary(out)
    finally:
        follow.done.set()
        bar.close()
        if trackers:
            trackers.close(summary)
    return RunResult.read(out)


def sweep(
    sweep_file: Path | str,
    *,
    out: Path | str | None = None,
    jobs: int = 1,
    track: Iterable[str] | None = None,
    quiet: bool | None = None,
    plugins: Iterable[str] = (),
) -> SweepResult:
    """Run a sweep file (pending points only: a killed sweep continues) into `out` (default
    runs/sweeps/NAME) and write its report; `track` logs each point as a tracker run;
    `plugins` adds plug-ins to the base scenario's."""
    from fedsim.sweeps import read_sweep, run_sweep

    cfg, _ = read_sweep(sweep_file, list(plugins))
    sweep_dir = Path(out or f"runs/sweeps/{cfg.name}")
    tracking = None
    if track:
        base = (cfg.tracking or TrackingConfig()).model_dump()
        try:
            tracking = TrackingConfig.model_validate(base | {"backends": list(track)})
        except ValidationError:
            raise ScenarioError(
                f"--track: {list(track)!r} is not a list of {sorted(MODULES)}"
            ) from None
    run_sweep(sweep_file, sweep_dir, jobs, quiet, tracking, list(plugins))
    from fedsim.report import axis_keys, collect, means, write_report

    report = write_report(sweep_dir, f"fedsim sweep {sweep_file} --jobs {jobs}")
    record, rows = collect(sweep_dir)
    return SweepResult(sweep_dir, rows, means(rows, axis_keys(record)), report)
