"""The ServerApp: each round sends "train" then "query" messages to every node, combines the
replies in partition-id order (not arrival order) and keeps the results, and its own
counters, in its Context.state."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    context.state["server"] = MetricRecord({"sent": 0, "replies": 0, "rounds": 0})
    node_ids = _connected_nodes(grid, int(context.run_config["min-nodes"]))
    for rnd in range(1, int(context.run_config["num-server-rounds"]) + 1):
        trained = _round_trip(grid, context, node_ids, MessageType.TRAIN, {"server-round": rnd})
        drawn = sum(int(r.content["metrics"]["drawn"]) for r in trained)
        queried = _round_trip(grid, context, node_ids, MessageType.QUERY, {"histogram": True})
        queried.sort(key=lambda r: int(r.content["stats"]["partition-id"]))
        stats = [r.content["stats"] for r in queried]
        count = sum(int(s["count"]) for s in stats)
        mean = sum(float(s["sum"]) for s in stats) / count
        var = sum(float(s["sumsq"]) for s in stats) / count - mean**2
        context.state[f"query-round-{rnd}"] = MetricRecord(
            {
                "drawn": drawn,
                "count": count,
                "mean": mean,
                "var": var,
                "train-calls": [int(s["train-calls"]) for s in stats],
                "query-calls": [int(s["query-calls"]) for s in stats],
            }
        )
        hist = np.sum([r.content["histogram"]["counts"].numpy() for r in queried], axis=0)
        context.state["histogram"] = ArrayRecord({"counts": Array(hist)})
        context.state["server"]["rounds"] = int(context.state["server"]["rounds"]) + 1


def _round_trip(
    grid: Grid, context: Context, node_ids: list[int], message_type: str, config: dict
) -> list[Message]:
    """Send one message of `message_type` to every node; count what went and came back in
    the ServerApp's own state."""
    messages = [
        Message(
            RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type=message_type
        )
        for n in node_ids
    ]
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    counters = context.state["server"]
    counters["sent"] = int(counters["sent"]) + len(messages)
    counters["replies"] = int(counters["replies"]) + len(replies)
    return replies


def _connected_nodes(grid: Grid, min_nodes: int) -> list[int]:
    """The connected nodes, once there are `min_nodes` (SuperNodes may connect after the
    ServerApp starts)."""
    while len(node_ids := list(grid.get_node_ids())) < min_nodes:
        time.sleep(1.0)
    return node_ids
