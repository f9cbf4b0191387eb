"""Any Flower App on fedsim's in-process engine: `fedsim flower run APP_DIR` and
`fedsim.run_flower_app`, with `flwr run`'s flags and Flower's Simulation Engine's semantics.

What that engine does for an app is done here, in this process and without Ray: the app's
folder goes on sys.path and its components load from pyproject.toml's
[tool.flwr.app.components]; the run config is [tool.flwr.app.config] fused with the overrides
by Flower's own functions and is every Context's; each node's node_config holds
`partition-id` and `num-partitions` and its Context (state included) lasts the run; the
ServerApp runs with its own Context. Optionally fedsim's `[system]` profiles apply to the
app's messages (fedsim/runtime/system_grid.py) and `workers` threads answer an exchange's
messages side by side. Node ids are NODE_ID_BASE + partition id (Flower draws them at
random), and replies come in the order the messages were sent (Ray's in the order they
finish): results equal Flower's up to the order of float sums.
"""

from __future__ import annotations

import random
import sys
import time
import tomllib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim.config import ScenarioError
from fedsim.heterogeneity import SystemConfig
from fedsim.registry import load_ref
from fedsim.runtime import compat
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.runtime.system_grid import SystemGrid

DEFAULT_SUPERNODES = 10  # Flower's local simulation federation's default
NUM_SUPERNODES = "num-supernodes"


@dataclass(frozen=True)
class FlowerApp:
    """A Flower App folder as its pyproject.toml declares it."""

    root: Path
    serverapp: str  # "module:attribute"
    clientapp: str
    num_supernodes: int | None  # its local simulation federation's, where it declares one


@dataclass(frozen=True)
class FlowerRun:
    """A finished run of a Flower App: the ServerApp's Context as the app left it, the
    run config every node had, each exchange on the simulated clock, the wall time."""

    context: Context
    run_config: dict[str, Any]
    num_supernodes: int
    exchanges: list[dict] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def sim_time_s(self) -> float:
        return self.exchanges[-1]["sim_time_s"] if self.exchanges else 0.0


def read_app(app_dir: Path | str) -> FlowerApp:
    """The app's components and federation size from its pyproject.toml; a folder that is not
    a Flower App is a ScenarioError saying what is missing."""
    root = Path(app_dir).expanduser().resolve()
    where = f"flower app: {str(app_dir)!r}"
    if not root.is_dir():
        raise ScenarioError(f"{where} is not a folder")
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise ScenarioError(f"{where} has no pyproject.toml (a Flower App declares itself there)")
    try:
        tool = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{where}: pyproject.toml is not valid TOML ({e})") from None
    components = tool.get("flwr", {}).get("app", {}).get("components", {})
    missing = [k for k in ("serverapp", "clientapp") if not isinstance(components.get(k), str)]
    if missing:
        raise ScenarioError(
            f"{where}: pyproject.toml has no [tool.flwr.app.components] {' and '.join(missing)}"
            ' (e.g. serverapp = "my_app.server_app:app")'
        )
    return FlowerApp(root, components["serverapp"], components["clientapp"], _federation(tool))


def _federation(tool: dict) -> int | None:
    """num-supernodes of the app's default federation (the pyproject form of Flower < 1.42)."""
    federations = tool.get("flwr", {}).get("federations", {})
    default = federations.get(federations.get("default", ""), {})
    value = default.get("options", {}).get(NUM_SUPERNODES)
    return value if isinstance(value, int) else None


def load_components(app: FlowerApp) -> tuple[ServerApp, ClientApp]:
    """Import the ServerApp and ClientApp as Flower does (the app's folder first on sys.path);
    one that fails to import is a ScenarioError carrying its traceback."""
    if str(app.root) not in sys.path:
        sys.path.insert(0, str(app.root))
    loaded = []
    for key, ref, kind in (
        ("serverapp", app.serverapp, ServerApp),
        ("clientapp", app.clientapp, ClientApp),
    ):
        try:
            obj = load_ref(ref)
        except Exception as e:
            raise ScenarioError(
                f"flower app: {key} {ref!r} cannot be imported: {type(e).__name__}: {e}",
                traceback.format_exc(),
            ) from None
        if not isinstance(obj, kind):
            raise ScenarioError(
                f"flower app: {key} {ref!r} is a {type(obj).__name__}, not a {kind.__name__}"
            )
        loaded.append(obj)
    return loaded[0], loaded[1]


def run_config_of(app: FlowerApp, overrides: dict[str, Any] | str | None) -> dict[str, Any]:
    """The run config every Context gets: the app's defaults fused with the overrides
    (`flwr run --run-config` text, or a dict)."""
    if isinstance(overrides, str):
        overrides = compat.parse_config_args(overrides)
    try:
        return compat.app_run_config(app.root, dict(overrides or {}))
    except ValueError as e:
        raise ScenarioError(f"--run-config: {e} (the app's [tool.flwr.app.config])") from None


def supernodes_of(app: FlowerApp, num_supernodes: int | None, federation_config: str | None) -> int:
    """The federation's size: given, from `--federation-config "num-supernodes=N"`, from the
    app's pyproject, or Flower's default."""
    if federation_config:
        options = compat.parse_config_args(federation_config)
        unknown = sorted(set(options) - {NUM_SUPERNODES})
        if unknown:
            raise ScenarioError(f"--federation-config: {unknown} (allowed: ['{NUM_SUPERNODES}'])")
        num_supernodes = options.get(NUM_SUPERNODES, num_supernodes)
    n = num_supernodes or app.num_supernodes or DEFAULT_SUPERNODES
    if not isinstance(n, int) or n < 1:
        raise ScenarioError(f"{NUM_SUPERNODES}: {n!r} is not a positive integer")
    return n


def system_of(system: SystemConfig | dict | Path | str | None) -> SystemConfig | None:
    """fedsim's `[system]` for an app: a SystemConfig, its dict, or a TOML file (its [system]
    table or its top level); round policies that choose clients are the app's strategy's."""
    if system is None or isinstance(system, SystemConfig):
        cfg = system
    else:
        raw = system
        if isinstance(system, str | Path):
            path = Path(system)
            if not path.is_file():
                raise ScenarioError(f"--system: {str(system)!r} is not a file")
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            raw = raw.get("system", raw)
        try:
            cfg = SystemConfig.model_validate(raw)
        except ValueError as e:
            first = str(e).splitlines()
            raise ScenarioError(f"--system: {' '.join(first[:3])}") from None
    if cfg is not None and cfg.policy not in ("wait_all", "deadline"):
        raise ScenarioError(
            f"system.policy: {cfg.policy!r} chooses clients, and a Flower App's strategy does"
            " that itself (allowed: ['wait_all', 'deadline'])"
        )
    if cfg is not None and cfg.adversaries.fraction:
        raise ScenarioError(
            "system.adversaries: corrupting updates needs fedsim's own methods (a Flower App's"
            " messages are its own)"
        )
    return cfg


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded for the run and put back after
    it: the same app, config and seed give the same run (the app's clients share them)."""
    states = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def run_flower_app(
    app_dir: Path | str,
    run_config: dict[str, Any] | str | None = None,
    num_supernodes: int | None = None,
    *,
    federation_config: str | None = None,
    system: SystemConfig | dict | Path | str | None = None,
    seed: int = 0,
    workers: int = 1,
) -> FlowerRun:
    """Run a Flower App folder on fedsim's in-process engine and return its ServerApp's
    Context (`.context.state`: what the app kept), the run config and, under `system`, each
    exchange on the simulated clock. Python's, NumPy's and torch's generators are seeded with
    `seed` for the run. Bad input raises ScenarioError before the app runs."""
    app = read_app(app_dir)
    config = run_config_of(app, run_config)
    n = supernodes_of(app, num_supernodes, federation_config)
    cfg = system_of(system)
    if workers < 1:
        raise ScenarioError(f"--workers: {workers} (allowed: 1 or more)")
    server_app, client_app = load_components(app)
    inner = InProcessGrid(client_app, n, workers=workers, run_config=config, report_errors=True)
    grid = inner if cfg is None else SystemGrid(inner, cfg, seed)
    context = Context(
        run_id=inner.run.run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config=dict(config),
    )
    start = time.perf_counter()
    with seeded(seed):
        server_app(grid=grid, context=context)
    exchanges = grid.clock() if isinstance(grid, SystemGrid) else []
    return FlowerRun(context, config, n, exchanges, time.perf_counter() - start)
