"""The ClientApp: a few gradient steps of linear regression on its partition."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from numpy_custom_strategy.task import load_data, local_steps, mse

app = ClientApp()


def _data(context: Context):
    cfg = context.run_config
    pid = int(context.node_config["partition-id"])
    samples, seed = int(cfg["samples-per-partition"]), int(cfg["seed"])
    return load_data(pid, samples, seed, int(cfg["outlier-every"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    x, y = _data(context)
    arrays = msg.content["arrays"]
    steps, lr = int(context.run_config["local-steps"]), float(context.run_config["lr"])
    w, b, loss = local_steps(arrays["w"].numpy(), arrays["b"].numpy(), x, y, steps, lr)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w), "b": Array(b)}),
            "metrics": MetricRecord({"train_mse": loss, "num-examples": len(y)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    x, y = _data(context)
    arrays = msg.content["arrays"]
    metrics = MetricRecord(
        {"eval_mse": mse(arrays["w"].numpy(), arrays["b"].numpy(), x, y), "num-examples": len(y)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
