"""What a client of partition p of n pulls the model towards, and the closed form of the run.

Client p moves w towards t_p = target-offset + p / n + (0, 1, ..., dim - 1) by `local-steps`
steps w <- w - lr (w - t_p), so it returns t_p + (w - t_p) c with c = (1 - lr)^local-steps.
FedAvg with weights n_p then gives w' = c w + (1 - c) t_bar (t_bar: the weighted mean of the
t_p), and after R rounds from 0: w_R = t_bar (1 - c^R).
"""

from __future__ import annotations

import numpy as np


def target(run_config: dict, partition_id: int, num_partitions: int) -> np.ndarray:
    dim = int(run_config["dim"])
    return float(run_config["target-offset"]) + partition_id / num_partitions + np.arange(dim)


def weight(run_config: dict, partition_id: int) -> int:
    return partition_id + 1 if run_config["weighting"] == "examples" else 1


def expected_final(run_config: dict, num_partitions: int) -> np.ndarray:
    """w_R of the closed form above, for a run of `num_partitions` nodes."""
    weights = np.array([weight(run_config, p) for p in range(num_partitions)], dtype=float)
    targets = np.stack([target(run_config, p, num_partitions) for p in range(num_partitions)])
    t_bar = weights @ targets / weights.sum()
    c = (1.0 - float(run_config["client.lr"])) ** int(run_config["client.local-steps"])
    return t_bar * (1.0 - c ** int(run_config["num-server-rounds"]))
