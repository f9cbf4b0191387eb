"""A plain Flower App written only against Flower's public Message API (no fedsim).

Each client adds (partition id + 1) to every weight and reports that as its
example count, and counts its calls in Context.state. With Flower's FedAvg, a
round moves w by sum (p+1)^2 / sum (p+1).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if context.run_config.get("fail-partition") == pid:
        raise RuntimeError(f"partition {pid} fails on purpose")
    calls = int(context.state["count"]["n"]) + 1 if "count" in context.state else 1
    context.state["count"] = MetricRecord({"n": calls})
    w = msg.content["arrays"]["w"].numpy()
    reply = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w + (pid + 1))}),
            "metrics": MetricRecord({"num-examples": pid + 1, "calls": calls}),
        }
    )
    return Message(reply, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    metrics = MetricRecord({"num-examples": 1, "w_sum": float(w.sum())})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    n = int(context.run_config["num-nodes"])
    strategy = FedAvg(min_available_nodes=n, min_train_nodes=n, min_evaluate_nodes=n)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({"w": Array(np.zeros(3))}),
        num_rounds=int(context.run_config["rounds"]),
    )
    context.state["final"] = result.arrays
    context.state["train"] = result.train_metrics_clientapp[max(result.train_metrics_clientapp)]
