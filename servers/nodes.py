"""Which node holds which data partition, and which partitions train in a round."""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsim.seeding import derive_seed

SAMPLING_STREAM = 1  # keeps client sampling independent of the other per-round streams


def discover_partitions(grid: Grid, expected: int, timeout: float = 600.0) -> dict[int, int]:
    """Map partition id -> node id by asking each node as it connects (`query.describe`).

    Sampling by partition id, not by node id, makes the same scenario and seed pick
    the same clients on every runtime. A node whose `num-partitions` disagrees with
    the scenario's `data.num_clients` is an error at once, not a silent wait. A grid that
    knows its table (the in-process runtime, any population size) gives it directly.
    """
    known = getattr(grid, "partitions", None)
    if known is not None:
        table = known()
        if len(table) != expected:
            raise RuntimeError(
                f"the grid has {len(table)} nodes, but the scenario has data.num_clients="
                f"{expected}: size the federation to match"
            )
        return table
    deadline, mapping, asked = time.monotonic() + timeout, {}, set()
    while True:
        new = sorted(set(grid.get_node_ids()) - asked)
        asked.update(new)
        queries = [Message(RecordDict(), dst_node_id=n, message_type="query.describe") for n in new]
        for reply in grid.send_and_receive(queries, timeout=timeout) if queries else ():
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise RuntimeError(f"node {node} did not describe itself: {reply.error.reason}")
            info = reply.content["node"]
            if int(info.get("num-partitions", expected)) != expected:
                raise RuntimeError(
                    f"node {node} has num-partitions={info['num-partitions']}, but the scenario"
                    f" has data.num_clients={expected}: size the federation to match"
                )
            pid = int(info["partition-id"])
            if pid in mapping or not 0 <= pid < expected:
                raise RuntimeError(
                    f"node {node}: partition-id {pid} is a duplicate or out of range"
                )
            mapping[pid] = node
        if len(mapping) == expected:
            return {p: mapping[p] for p in range(expected)}
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(mapping)} of {expected} nodes connected in {timeout}s")
        if len(asked) % 10 == 0 or not new:
            logging.getLogger("flwr").warning(
                "waiting for nodes: %d of %d connected", len(mapping), expected
            )
        time.sleep(2.0)


def cohort_size(eligible: int, fraction: float, min_clients: int) -> int:
    """Clients that train in a round: max(min_clients, int(eligible * fraction)), at most all."""
    return min(eligible, max(min_clients, int(eligible * fraction)))


def sample_partitions(eligible, size: int, seed: int, server_round: int) -> list[int]:
    """`size` of the eligible partitions (a sorted sequence: range, array or list), drawn from
    (seed, round), in increasing order."""
    if size >= len(eligible):
        return [int(p) for p in eligible]
    rng = np.random.default_rng(derive_seed(seed, server_round, SAMPLING_STREAM))
    return sorted(int(eligible[i]) for i in rng.choice(len(eligible), size=size, replace=False))


def poisson_partitions(eligible, q: float, seed: int, server_round: int) -> list[int]:
    """Each eligible partition independently with probability q (DP-FedAvg's cohort, as its
    accountant assumes; possibly empty), drawn from (seed, round) in increasing order: a
    Binomial(n, q) count, then that many partitions uniformly (the same distribution, without
    a coin per client of a ten-million population)."""
    rng = np.random.default_rng(derive_seed(seed, server_round, SAMPLING_STREAM))
    k = int(rng.binomial(len(eligible), q))
    return sorted(int(eligible[i]) for i in rng.choice(len(eligible), size=k, replace=False))
