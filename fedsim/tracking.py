"""Experiment trackers: a run's rows streamed to TensorBoard, MLflow or Weights & Biases.

A tracker gets the resolved scenario once, every metric row as its round completes, and the
summary at the end; it writes where the researcher's tools already look (event files in the
run directory, an MLflow store, a W&B run). Each backend is an optional extra; a scenario
that names one not installed is refused at load. Resuming a run continues its tracker runs
(the ids are kept in the run directory's tracking.json).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRACKING_IDS = "tracking.json"
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # what each needs


class TrackingConfig(BaseModel):
    """`[tracking]`: where a run's metrics also go. `experiment` groups runs (MLflow
    experiment, W&B project; default the scenario's name, for sweeps the sweep's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list,
        description="trackers that also get every metric row (each an optional extra: `pip"
        " install 'fedsim-flwr[NAME]'`)",
    )
    experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment, W&B project (default: scenario name)"
    )
    mlflow_uri: str | None = Field(
        None, min_length=1, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    )
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="W&B: write local files to sync later, or stream to the server"
    )

    @field_validator("backends")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a row (booleans and the round number left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)
    }


@dataclass(frozen=True)
class TrackedRun:
    """What a backend is told of the run it records (`resume_id`: its earlier run's id)."""

    run_dir: Path
    config: Mapping[str, Any]
    cfg: TrackingConfig
    experiment: str
    name: str
    tags: Mapping[str, str]
    resume_id: str | None


class Tracker(Protocol):
    """One backend's run: `log` a row per round, `close` with the summary (None: failed)."""

    def log(self, row: Mapping[str, Any]) -> None: ...

    def close(self, summary: Mapping[str, Any] | None) -> None: ...


class TensorBoard(Tracker):
    """Event files in RUN_DIR/tensorboard: a scalar per metric per round, the config as text."""

    def __init__(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = None
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"))
        text = "\n".join(f"    {k} = {json.dumps(v)}" for k, v in flatten(run.config).items())
        self.writer.add_text("config", text, global_step=0)

    def log(self, row: Mapping[str, Any]) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["round"]))

    def close(self, summary: Mapping[str, Any] | None) -> None:
        self.writer.close()


class MLflow(Tracker):
    """An MLflow run: params from the resolved scenario, metrics per round (step = round),
    the run directory as artifacts at the end."""

    def __init__(self, run: TrackedRun) -> None:
        from mlflow.tracking import MlflowClient

        uri = run.cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        self.client, self.run_dir = MlflowClient(uri), run.run_dir
        if run.resume_id is not None:  # a resumed run continues its MLflow run
            self.run_id = run.resume_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(run.experiment)
        if found is None:
            root = artifact_root(uri, run.experiment)
            exp = self.client.create_experiment(run.experiment, artifact_location=root)
        else:
            exp = found.experiment_id
        self.run_id = self.client.create_run(
            exp, run_name=run.name, tags=dict(run.tags)
        ).info.run_id
        params = list(flatten(run.config).items())
        for i in range(0, len(params), 100):  # MLflow's batch limit
            batch = [_param(k, v) for k, v in params[i : i + 100]]
            self.client.log_batch(self.run_id, params=batch)

    def log(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now_ms = int(row["round"]), int(time.time() * 1000)
        metrics = [Metric(k, v, now_ms, step) for k, v in scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, summary: Mapping[str, Any] | None) -> None:
        if summary is not None:
            self.client.log_artifacts(self.run_id, str(self.run_dir))
        self.client.set_terminated(self.run_id, "FINISHED" if summary is not None else "FAILED")


def artifact_root(uri: str, experiment: str) -> str | None:
    """A sqlite store keeps artifacts in mlruns/ beside its database file (MLflow's own
    default is mlruns/ in the working directory, wherever a run was started from); other
    stores (a tracking server) decide themselves."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db.parent / "mlruns" / experiment).as_uri()


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])  # MLflow's value limit


class Wandb(Tracker):
    """A W&B run (offline by default: files under RUN_DIR/wandb, `wandb sync` uploads them)."""

    def __init__(self, run: TrackedRun) -> None:
        import wandb

        self.run = wandb.init(
            project=run.experiment,
            name=run.name,
            group=run.tags.get("sweep"),
            config=dict(run.config),
            dir=str(run.run_dir),
            mode=run.cfg.wandb_mode,
            id=run.resume_id,
            resume="allow" if run.resume_id else None,
            reinit="create_new",
        )
        self.run_id = self.run.id

    def log(self, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=int(row["round"]))

    def close(self, summary: Mapping[str, Any] | None) -> None:
        self.run.finish(exit_code=0 if summary is not None else 1)


BACKENDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


class Trackers(Tracker):
    """Every backend of a run's `[tracking]`, opened together (ids kept for a resume)."""

    def __init__(
        self,
        run_dir: Path | str,
        config: Mapping[str, Any],
        cfg: TrackingConfig,
        *,
        experiment: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        run_dir = Path(run_dir)
        ids_file = run_dir / TRACKING_IDS
        ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
        experiment = cfg.experiment or experiment or str(config.get("name", "fedsim"))
        tags = {"run_dir": str(run_dir.resolve()), **(tags or {})}
        self.backends: list[Tracker] = []
        for name in cfg.backends:
            run = TrackedRun(
                run_dir, config, cfg, experiment, run_name(run_dir), tags, ids.get(name)
            )
            tracker = BACKENDS[name](run)
            if tracker.run_id is not None:
                ids[name] = tracker.run_id
            self.backends.append(tracker)
        if ids:
            ids_file.write_text(json.dumps(ids) + "\n")

    def log(self, row: Mapping[str, Any]) -> None:
        for backend in self.backends:
            backend.log(row)

    def close(self, summary: Mapping[str, Any] | None) -> None:
        for backend in self.backends:
            backend.close(summary)


def run_name(run_dir: Path) -> str:
    """A sweep point's run is named by its point and seed; a run by its directory."""
    parts = run_dir.resolve().parts
    if len(parts) >= 3 and parts[-3] == "points":
        return f"{parts[-2]}-{parts[-1]}"
    return parts[-1]


def replay(
    run_dir: Path | str,
    config: Mapping[str, Any],
    cfg: TrackingConfig,
    rows: Iterable[Mapping[str, Any]],
    summary: Mapping[str, Any] | None,
    **kwargs: Any,
) -> None:
    """Log a finished run's rows in one go (a sweep's points, after each completes)."""
    trackers = Trackers(run_dir, config, cfg, **kwargs)
    for row in rows:
        trackers.log(row)
    trackers.close(summary)
