"""A custom strategy: coordinate-wise trimmed mean of the clients' models, applied through
server momentum. Sorting makes the aggregate independent of the order replies arrive in."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class TrimmedMeanMomentum(FedAvg):
    """FedAvg's sampling and metrics; the model step is x <- x - lr * v, with
    v <- momentum * v + (x - trimmed_mean(client models))."""

    def __init__(self, trim_fraction: float, server_lr: float, momentum: float, **kwargs):
        super().__init__(**kwargs)
        self.trim_fraction = trim_fraction
        self.server_lr = server_lr
        self.momentum = momentum
        self.velocity: dict[str, np.ndarray] = {}
        self.trimmed_per_side = 0
        self._current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = [m.content for m in replies if not m.has_error()]
        if not contents or self._current is None:
            return None, None
        k = int(len(contents) * self.trim_fraction)
        self.trimmed_per_side = k
        new = {}
        for key, current in self._current.items():
            stack = np.sort(np.stack([c["arrays"][key].numpy() for c in contents]), axis=0)
            trimmed = stack[k : len(contents) - k].mean(axis=0)
            x = current.numpy()
            v = self.momentum * self.velocity.get(key, np.zeros_like(x)) + (x - trimmed)
            self.velocity[key] = v
            new[key] = Array(x - self.server_lr * v)
        return ArrayRecord(new), self.train_metrics_aggr_fn(contents, self.weighted_by_key)
