"""The Flower internals fedsim touches, in one place (tests/test_flower_compat.py guards them).

- `TaskIdentity`: process-wide identity that `Message(...)` reads for run_id and
  src_node_id; Flower's own runtimes set it before running a ServerApp.
- `_run_simulation`: the Simulation Engine entry that accepts the ServerApp's
  Context, so the ServerApp gets its run_config as under `flwr run`.
- `get_fused_config_from_dir`, `parse_config_args`: a Flower App's run config as Flower
  builds it (fedsim/flower_apps.py).
- `pull_objects`, as the deployment Grid, the SuperNode and the ClientApp runtime import it:
  `short_object_pulls` shortens its retry wait.
Supported Flower range: pyproject.toml pins flwr>=1.41,<1.43 (SUPPORTED below).
"""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path
from typing import Any

import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.runtime.run_clientapp as run_clientapp
import flwr.supernode.start_client_internal as supernode
from flwr.app import Context, Message
from flwr.common.config import get_fused_config_from_dir
from flwr.common.config import parse_config_args as flower_parse_config_args
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.task_identity import TaskIdentity

SUPPORTED = {(1, 41), (1, 42)}  # Flower minor releases checked against this module
OBJECT_PULL_BACKOFF_S = (0.005, 0.2)  # first and longest wait for an object not yet stored


def set_server_identity(run_id: int) -> None:
    """Make messages created in this process come from the server of `run_id`."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def assign_message_id(msg: Message) -> str:
    """Give a message the unique id the SuperLink would (replies point back to it)."""
    msg_id = uuid.uuid4().hex
    msg.metadata.__dict__["_message_id"] = msg_id
    return msg_id


def run_simulation(
    server_app: Any, client_app: Any, num_supernodes: int, backend_config: dict, context: Context
) -> Context:
    """Run on Flower's Simulation Engine (Ray) with the given ServerApp context."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    result = _run_simulation(
        num_supernodes=num_supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_config=backend_config,
        server_app_context=context,
    )
    return result.context


def app_run_config(app_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """A Flower App's run config: its pyproject's [tool.flwr.app.config] fused with the
    overrides, by Flower's own function (an unknown key is a ValueError naming it)."""
    return dict(get_fused_config_from_dir(Path(app_dir), overrides))


def parse_config_args(text: str) -> dict[str, Any]:
    """`flwr run`'s `--run-config "k=v k2='s'"` (or a .toml file) as a flat dict, by Flower's
    own parser."""
    return flower_parse_config_args([text])


def short_object_pulls() -> None:
    """Retry an object that is not stored yet after 5 ms, doubling up to 0.2 s, instead of
    Flower's 1 s doubling up to 10 s. A message is listed before its objects arrive (the
    sender pushes them after it), so a prompt reader waited a whole second on every hop.
    The overall time limit stays Flower's; the limit on tries goes, as tries are shorter."""
    waits = {
        "initial_backoff": OBJECT_PULL_BACKOFF_S[0],
        "backoff_cap": OBJECT_PULL_BACKOFF_S[1],
        "max_tries_per_object": None,
    }
    http_grid.pull_objects = supernode.pull_objects = partial(
        inflatable_utils.pull_objects, **waits
    )
    run_clientapp.pull_and_inflate_object_from_tree = partial(
        inflatable_utils.pull_and_inflate_object_from_tree, **waits
    )
