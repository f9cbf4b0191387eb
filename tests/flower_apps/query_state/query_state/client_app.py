"""The ClientApp: each "train" message draws new samples and adds them to running moments
and a histogram kept in Context.state; each "query" message reports them (and is counted)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
RANGE = (-6.0, 16.0)  # of the histogram, whose end bins take the tails


def _stats(context: Context) -> MetricRecord:
    if "stats" not in context.state:
        context.state["stats"] = MetricRecord(
            {"count": 0, "sum": 0.0, "sumsq": 0.0, "train-calls": 0, "query-calls": 0}
        )
    return context.state["stats"]


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    cfg = context.run_config
    rng = np.random.default_rng([int(cfg["seed"]), pid, rnd])
    draws = rng.normal(loc=pid % 10, scale=1.0 + pid % 3, size=int(cfg["draws-per-round"]))
    stats = _stats(context)
    stats["count"] = int(stats["count"]) + len(draws)
    stats["sum"] = float(stats["sum"]) + float(draws.sum())
    stats["sumsq"] = float(stats["sumsq"]) + float((draws**2).sum())
    stats["train-calls"] = int(stats["train-calls"]) + 1
    hist, _ = np.histogram(np.clip(draws, *RANGE), bins=int(cfg["bins"]), range=RANGE)
    if "histogram" in context.state:
        hist = hist + context.state["histogram"]["counts"].numpy()
    context.state["histogram"] = ArrayRecord({"counts": Array(hist.astype(np.int64))})
    metrics = MetricRecord({"partition-id": pid, "drawn": len(draws)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    stats = _stats(context)
    stats["query-calls"] = int(stats["query-calls"]) + 1
    reply = MetricRecord(dict(stats) | {"partition-id": int(context.node_config["partition-id"])})
    content = RecordDict({"stats": reply})
    if msg.content["config"]["histogram"] and "histogram" in context.state:
        content["histogram"] = context.state["histogram"]
    return Message(content=content, reply_to=msg)
