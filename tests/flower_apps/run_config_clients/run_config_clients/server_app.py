"""The ServerApp: Flower's FedAvg from w = 0; keeps the final model, each round's metrics and
the run config it was given in its Context.state."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    context.state["run-config"] = ConfigRecord(dict(cfg))
    n = int(cfg["min-nodes"])
    strategy = FedAvg(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({"w": Array(np.zeros(int(cfg["dim"])))}),
        num_rounds=int(cfg["num-server-rounds"]),
    )
    context.state["final"] = result.arrays
    for rnd, metrics in result.train_metrics_clientapp.items():
        context.state[f"train-round-{rnd}"] = metrics
    for rnd, metrics in result.evaluate_metrics_clientapp.items():
        context.state[f"evaluate-round-{rnd}"] = metrics
