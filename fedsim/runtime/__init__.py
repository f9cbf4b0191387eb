"""Runtimes: the same ServerApp and ClientApp in-process, on Flower's Simulation Engine, or
on Flower's deployment engine (`deployment`: submitted to a running SuperLink).

The apps are found by their Flower component references (as in pyproject's
[tool.flwr.app.components]), so the core does not import them directly. The
deployment runtime plugs in here as a third launcher.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from fedsim.config import Scenario
from fedsim.registry import load_ref
from fedsim.results import ERROR, RunFailed

from . import compat
from .cohorts import cohort_chunk
from .inprocess import InProcessGrid

SERVER_APP = "fedsim.servers.app:app"
CLIENT_APP = "fedsim.clients.app:app"
CLIENT_COHORTS = "fedsim.clients.app:train_cohorts"  # the vectorized path


def run_config(scenario: Scenario, out_dir: Path | str, resume: bool) -> dict[str, Any]:
    return {"scenario-json": scenario.to_json(), "out-dir": str(out_dir), "resume": resume}


def launch(
    scenario: Scenario,
    out_dir: Path | str,
    server_app: Any = None,
    client_app: Any = None,
    num_nodes: int | None = None,
    resume: bool = False,
    federation: str | None = None,
    server_dir: Path | str | None = None,
) -> None:
    """Run `server_app` (default: fedsim's) with `client_app` on the scenario's runtime;
    `resume` continues the run in `out_dir` from its last checkpoint. `federation` names
    the SuperLink connection (in FLWR_HOME's config.toml) of the `deployment` runtime, and
    `server_dir` where its ServerApp writes on the SuperLink's machine (default `out_dir`).
    A run that stopped early raises RunFailed with the reason it left (all runtimes)."""
    error = Path(out_dir) / ERROR
    error.unlink(missing_ok=True)
    _run(scenario, out_dir, server_app, client_app, num_nodes, resume, federation, server_dir)
    if error.is_file():
        raise RunFailed(f"the run stopped early:\n{error.read_text()}")


def _run(
    scenario, out_dir, server_app, client_app, num_nodes, resume, federation, server_dir
) -> None:
    if scenario.runtime == "deployment":
        if server_app or client_app or num_nodes:
            raise ValueError("runtime: deployment runs fedsim's own apps on the SuperNodes")
        from .deployment import launch_deployment

        launch_deployment(scenario, out_dir, resume, federation, server_dir)
        return
    server_app = server_app or load_ref(SERVER_APP)
    client_app = client_app or load_ref(CLIENT_APP)
    num_nodes = num_nodes or scenario.data.num_clients
    cfg = run_config(scenario, out_dir, resume)
    if scenario.runtime == "inprocess":
        chunk = cohort_chunk(scenario) if client_app is load_ref(CLIENT_APP) else None
        cohorts = load_ref(CLIENT_COHORTS) if chunk else None
        grid = InProcessGrid(client_app, num_nodes, cohort=cohorts, chunk=chunk or 1)
        server_app(grid=grid, context=_server_context(grid.run.run_id, cfg))
    elif scenario.runtime == "simulation":
        sim = scenario.simulation
        ray = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
        # a running cluster brings its own resources; a local Ray gets this machine's cores
        ray |= {"address": sim.address} if sim.address else {"num_cpus": os.cpu_count() or 1}
        backend = {
            "client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus},
            "init_args": ray,
        }
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        ctx = _server_context(random.getrandbits(63), cfg)
        compat.run_simulation(server_app, client_app, num_nodes, backend, ctx)
    else:  # validated earlier; kept for a runtime added to the config but not here
        raise ValueError(f"runtime: {scenario.runtime!r} has no launcher")


def _server_context(run_id: int, cfg: dict[str, Any]) -> Context:
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config=cfg)
