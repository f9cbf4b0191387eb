"""The ClientApp: its target, step size, steps and weight come from context.run_config and
context.node_config (partition-id, num-partitions)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from run_config_clients.task import target, weight

app = ClientApp()


def _target(context: Context) -> np.ndarray:
    pid = int(context.node_config["partition-id"])
    return target(context.run_config, pid, int(context.node_config["num-partitions"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    t = _target(context)
    lr = float(context.run_config["client.lr"])
    steps = int(context.run_config["client.local-steps"])
    for _ in range(steps):
        w = w - lr * (w - t)
    pid = int(context.node_config["partition-id"])
    metrics = MetricRecord(
        {"num-examples": weight(context.run_config, pid), "lr": lr, "local-steps": steps}
    )
    content = RecordDict({"arrays": ArrayRecord({"w": Array(w)}), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"]["w"].numpy()
    distance = float(np.linalg.norm(w - _target(context)))
    pid = int(context.node_config["partition-id"])
    metrics = MetricRecord({"distance": distance, "num-examples": weight(context.run_config, pid)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
