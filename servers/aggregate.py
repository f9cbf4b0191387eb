"""Running aggregates over a stream of client replies (nothing is kept per client)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from flwr.app import Message, MetricRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedsim.codecs import readonly_tensor


def in_cohort_order(replies: Iterable[Message], cohort: list[int]) -> Iterator[Message]:
    """Yield replies in cohort order, holding back only those that arrive early.

    Replies from the in-process runtime arrive in order and pass straight through;
    Ray's arrival order varies, and reordering keeps every runtime's sums identical.
    """
    rank = {node: i for i, node in enumerate(cohort)}
    held: dict[int, Message] = {}
    nxt = 0
    for msg in replies:
        held[rank[msg.metadata.src_node_id]] = msg
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1
    for i in sorted(held):  # missing replies leave gaps; release the rest in order
        yield held[i]


class WeightedSum:
    """sum_i w_i v_i and sum_i w_i, accumulated one vector at a time (float32, in place)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # shaped by the first vector added
        self.weight = 0.0

    def add(self, v: np.ndarray, w: float) -> None:
        if self.total is None:
            self.total = torch.zeros(v.shape, dtype=torch.float32)
        self.total.add_(readonly_tensor(v), alpha=w)  # fused: no temporary of size d
        self.weight += w

    def mean(self) -> np.ndarray:
        return (self.total / self.weight).numpy()


class CoordinateWise:
    """Unweighted coordinate-wise median, or trimmed mean cutting `trim` of the values at each
    end (Flower's FedMedian and FedTrimmedAvg rules): robust, but every vector is kept."""

    def __init__(self, kind: str, trim: float) -> None:
        self.kind, self.trim, self.vectors = kind, trim, []
        self.weight = 0.0

    def add(self, v: np.ndarray, w: float) -> None:
        self.vectors.append(np.array(v, dtype=np.float32))
        self.weight += 1.0

    def mean(self) -> np.ndarray:
        stacked = np.stack(self.vectors)
        if self.kind == "median":
            return np.median(stacked, axis=0).astype(np.float32)
        return np.asarray(trim_mean(stacked, self.trim), dtype=np.float32)


def aggregator(kind: str = "mean", trim: float = 0.0) -> WeightedSum | CoordinateWise:
    """The running weighted mean, or a robust coordinate-wise rule."""
    return WeightedSum() if kind == "mean" else CoordinateWise(kind, trim)


class ClientMetrics:
    """train_loss weighted by examples; grad_evals and work summed; rejected updates counted."""

    def __init__(self) -> None:
        self.examples = self.loss = 0.0
        self.grad_evals = self.work = self.rejected = 0
        self.epsilon = 0.0  # the largest a client reports (sample-level and local DP)

    def add(self, m: MetricRecord) -> None:
        n = float(m["num-examples"])
        self.examples += n
        self.loss += n * float(m["train_loss"])
        self.grad_evals += int(m["grad_evals"])
        self.work += int(m["work"])
        self.epsilon = max(self.epsilon, float(m.get("epsilon", 0.0)))

    def record(self) -> MetricRecord | None:
        if not self.examples:
            return None
        return MetricRecord(
            {
                "train_loss": self.loss / self.examples,
                "grad_evals": self.grad_evals,
                "work": self.work,
                "rejected": self.rejected,
                "epsilon": self.epsilon,
            }
        )
