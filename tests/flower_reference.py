"""The reference for fedsim's Flower App runner: a Flower App run on Flower's own Simulation
Engine (Ray), as the simulation process of `flwr run APP --stream` runs it (flwr/simulation/
app.py: the app's components by reference from its directory, the run config fused from
`[tool.flwr.app.config]` and the overrides, `_run_simulation(..., is_app=True)`), only without
a SuperLink to pull the run from and without installing the app as a FAB first."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.config import (
    get_fused_config_from_dir,
    get_metadata_from_config,
    get_project_config,
)
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

# one CPU per ClientApp (Flower 1.42's default is 2), all this machine's cores for Ray; no
# dashboard, and Ray's own logs kept from the test output
CLIENT_RESOURCES = {"num_cpus": 1, "num_gpus": 0.0}


def run_on_flower(app_dir: str | Path, run_config: dict, num_supernodes: int) -> Context:
    """Run the Flower App in `app_dir` on `num_supernodes` simulated SuperNodes with the
    run-config overrides `run_config` (flat keys, as `--run-config` gives them); return the
    ServerApp's Context after the run (its `.state` holds what the app stored)."""
    app_dir = Path(app_dir).resolve()
    config = get_project_config(app_dir)
    components = config["tool"]["flwr"]["app"]["components"]
    fab_id, fab_version = get_metadata_from_config(config)
    fused = get_fused_config_from_dir(app_dir, dict(run_config))

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run = replace(
        run,
        fab_id=fab_id,
        fab_version=fab_version,
        override_config=dict(run_config),
        primary_task_id=generate_rand_int_from_bytes(TASK_ID_NUM_BYTES),
        federation_id=NOOP_FEDERATION_ID,
    )
    # what the simulation process sets from the task it pulls: messages the ServerApp
    # creates read their run id and source node from it
    TaskIdentity.task_id = run.primary_task_id
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=fused
    )
    backend = {
        "client_resources": dict(CLIENT_RESOURCES),
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": False,
        },
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    pythonpath = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it
    try:
        result = _run_simulation(
            num_supernodes=num_supernodes,
            exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
            client_app_attr=components["clientapp"],
            server_app_attr=components["serverapp"],
            server_app_context=context,
            backend_config=backend,
            app_dir=str(app_dir),
            run=run,
            is_app=True,
        )
    finally:
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
    return result.context
