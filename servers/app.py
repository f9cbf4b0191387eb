"""The fedsim ServerApp: reads the scenario from the run config and runs it.

`run_config` carries `scenario-json` (the resolved scenario, set by `fedsim run`)
or `scenario` (a TOML path, e.g. from pyproject's [tool.flwr.app.config] under
`flwr run`), and `out-dir`, the run directory to write.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.algorithms import SERVER_HALVES
from fedsim.config import Scenario, load_scenario, parse_scenario_json

from .experiment import run_experiment
from .fedbuff import run_fedbuff

app = ServerApp()


def scenario_from_run_config(run_config: dict) -> Scenario:
    if run_config.get("scenario-json"):  # "" (pyproject's default) means unset
        return parse_scenario_json(str(run_config["scenario-json"]))
    return load_scenario(str(run_config["scenario"]))


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    scenario = scenario_from_run_config(context.run_config)
    out_dir = str(context.run_config.get("out-dir", "runs/flwr"))
    resume = bool(context.run_config.get("resume", False))
    loop = SERVER_HALVES.get(scenario.algorithm.name).loop
    if loop:
        loop(grid, scenario, out_dir, resume)
    elif scenario.system.policy != "fedbuff":
        run_experiment(grid, scenario, out_dir, resume=resume)
    elif resume:
        raise ValueError("resume: asynchronous (fedbuff) runs keep no checkpoints")
    else:
        run_fedbuff(grid, scenario, out_dir)
