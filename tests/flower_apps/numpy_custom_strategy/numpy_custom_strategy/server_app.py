"""The ServerApp: runs the app's own strategy; keeps the final model, the server momentum and
every round's metrics in its Context.state."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from numpy_custom_strategy.strategy import TrimmedMeanMomentum
from numpy_custom_strategy.task import DIM

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    strategy = TrimmedMeanMomentum(
        trim_fraction=float(cfg["trim-fraction"]),
        server_lr=float(cfg["server-lr"]),
        momentum=float(cfg["server-momentum"]),
        min_available_nodes=int(cfg["min-nodes"]),
        min_train_nodes=int(cfg["min-nodes"]),
        min_evaluate_nodes=int(cfg["min-nodes"]),
    )
    initial = ArrayRecord({"w": Array(np.zeros(DIM)), "b": Array(np.zeros(1))})
    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=int(cfg["num-server-rounds"])
    )
    context.state["final"] = result.arrays
    context.state["velocity"] = ArrayRecord({k: Array(v) for k, v in strategy.velocity.items()})
    context.state["trim"] = MetricRecord({"trimmed-per-side": strategy.trimmed_per_side})
    for rnd, metrics in result.train_metrics_clientapp.items():
        context.state[f"train-round-{rnd}"] = metrics
    for rnd, metrics in result.evaluate_metrics_clientapp.items():
        context.state[f"evaluate-round-{rnd}"] = metrics
