"""The ServerApp: Flower's FedAvg; keeps the final model and every round's metrics in its
Context.state, for comparing runtimes."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from pytorch_fedavg.task import initial_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n = int(cfg["min-nodes"])
    strategy = FedAvg(
        fraction_train=float(cfg["fraction-train"]),
        min_available_nodes=n,
        min_train_nodes=n,
        min_evaluate_nodes=n,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_model(int(cfg["seed"])).state_dict()),
        train_config=ConfigRecord({"lr": float(cfg["lr"])}),
        num_rounds=int(cfg["num-server-rounds"]),
    )
    context.state["final"] = result.arrays
    for rnd, metrics in result.train_metrics_clientapp.items():
        context.state[f"train-round-{rnd}"] = metrics
    for rnd, metrics in result.evaluate_metrics_clientapp.items():
        context.state[f"evaluate-round-{rnd}"] = metrics
