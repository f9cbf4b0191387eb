"""Which node holds which data partition, and which partitions train in a round."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsim.seeding import derive_seed

SAMPLING_STREAM = 1  # keeps client sampling independent of the other per-round streams


def discover_partitions(grid: Grid, expected: int, timeout: float = 600.0) -> dict[int, int]:
    """Map partition id -> node id by asking every node (`query.describe`).

    Sampling by partition id, not by node id, makes the same scenario and seed
    pick the same clients on every runtime.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} nodes connected")
        time.sleep(0.5)
    queries = [Message(RecordDict(), dst_node_id=n, message_type="query.describe") for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
        pid = int(reply.content["node"]["partition-id"])
        if pid in mapping:
            raise RuntimeError(f"partition {pid} is held by two nodes")
        mapping[pid] = reply.metadata.src_node_id
    missing = sorted(set(range(expected)) - set(mapping))
    if missing:
        raise RuntimeError(f"no node holds partitions {missing[:10]}")
    return {p: mapping[p] for p in range(expected)}


def sample_partitions(
    num: int, fraction: float, min_clients: int, seed: int, server_round: int
) -> list[int]:
    """The round's cohort: max(min_clients, int(num * fraction)) partitions, from (seed, round)."""
    k = min(num, max(min_clients, int(num * fraction)))
    if k == num:
        return list(range(num))
    rng = np.random.default_rng(derive_seed(seed, server_round, SAMPLING_STREAM))
    return sorted(int(i) for i in rng.choice(num, size=k, replace=False))
