"""The fedsim ServerApp: reads the scenario from the run config and runs it.

`run_config` carries `scenario-json` (the resolved scenario, set by `fedsim run`)
or `scenario` (a TOML path, e.g. from pyproject's [tool.flwr.app.config] under
`flwr run`), and `out-dir`, the run directory to write. A run that stops early leaves its
reason (a client's traceback, ...) in the run directory's error.txt. With `return-outputs`
the directory is printed at the end, for the submitter (fedsim/runtime/outputs.py).
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from socket import gethostname

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import HttpGrid

from fedsim.config import Scenario, load_scenario, parse_scenario_json
from fedsim.registry import load_ref
from fedsim.results import ERROR
from fedsim.runtime import compat, outputs

from .driver import run_rounds
from .polling import PollingGrid

app = ServerApp()


def scenario_from_run_config(run_config: dict) -> Scenario:
    if run_config.get("scenario-json"):  # "" (pyproject's default) means unset
        return parse_scenario_json(
            str(run_config["scenario-json"]), f"the ServerApp's host {gethostname()!r}"
        )
    return load_scenario(str(run_config["scenario"]))


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    scenario = scenario_from_run_config(context.run_config)
    out_dir = str(context.run_config.get("out-dir", "runs/flwr"))
    resume = bool(context.run_config.get("resume", False))
    if isinstance(grid, HttpGrid):  # the deployment engine's
        grid = PollingGrid(grid)
        compat.short_object_pulls()
    loop = load_ref(scenario.method.loop) if scenario.method.loop else run_rounds
    try:
        loop(grid, scenario, out_dir, resume)
    except Exception:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / ERROR).write_text(traceback.format_exc())
        raise
    finally:
        if context.run_config.get("return-outputs") and Path(out_dir).is_dir():
            outputs.emit(out_dir)
