"""Aggregation rules: what turns a round's update vectors into the one the method's server
step receives. Each is a running rule fed one vector at a time; robust rules and DP-FedAvg's
clip-and-noise wrap the mean rather than branch inside a method (as Flower's DP strategy
wrappers and Opacus wrap a model)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from flwr.app import Message, MetricRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from torch import Tensor

DP_STREAM = 51


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
    """sum_i w_i v_i and sum_i w_i, accumulated one vector at a time (float32, in place); its
    value is the weighted mean."""

    def __init__(self) -> None:
        self.total: Tensor | None = None  # shaped by the first vector added
        self.weight = 0.0
        self.count = 0

    def add(self, v: Tensor, w: float) -> None:
        if self.total is None:
            self.total = torch.zeros(v.shape, dtype=torch.float32)
        self.total.add_(v, alpha=w)  # fused: no temporary of size d
        self.weight += w
        self.count += 1

    def value(self) -> Tensor:
        return self.total / self.weight


class Buffered(WeightedSum):
    """FedBuff's (1/K) sum_i s(tau_i) v_i: weighted by staleness, divided by the count."""

    def value(self) -> Tensor:
        return self.total / self.count


class CoordinateWise:
    """Unweighted coordinate-wise median, or trimmed mean cutting `trim` of the values at each
    end (Flower's FedMedian and FedTrimmedAvg rules): robust, but every vector is kept."""

    def __init__(self, kind: str, trim: float) -> None:
        self.kind, self.trim, self.vectors = kind, trim, []
        self.count = 0

    def add(self, v: Tensor, w: float) -> None:
        self.vectors.append(v.numpy())
        self.count += 1

    def value(self) -> Tensor:
        stacked = np.stack(self.vectors)
        if self.kind == "median":
            return torch.from_numpy(np.median(stacked, axis=0).astype(np.float32))
        return torch.from_numpy(np.asarray(trim_mean(stacked, self.trim), dtype=np.float32))


class ClipAndNoise:
    """DP-FedAvg around a sum: every update clipped to l2 norm C and weighing the same,
    then (sum_i clip(v_i) + N(0, sigma^2 C^2)) / (q N), the expected size of the Poisson
    cohort (McMahan et al. 2018's fixed denominator: one client moves it by at most C / qN,
    whatever the cohort's size, even an empty one)."""

    def __init__(
        self, c: float, sigma: float, expected: float, rng: np.random.Generator, dim: int
    ) -> None:
        self.inner, self.c, self.sigma, self.rng = WeightedSum(), c, sigma, rng
        self.expected, self.dim = expected, dim

    @property
    def count(self) -> int:
        return self.inner.count

    def add(self, v: Tensor, w: float) -> None:
        norm = float(torch.linalg.vector_norm(v))
        self.inner.add(v if norm <= self.c else v * np.float32(self.c / norm), 1.0)

    def value(self) -> Tensor:
        total = self.inner.total
        total = np.zeros(self.dim, np.float32) if total is None else total.numpy()
        noisy = (
            total + self.rng.normal(0.0, self.sigma * self.c, total.shape) if self.sigma else total
        )
        return torch.from_numpy(np.asarray(noisy, dtype=np.float32) / np.float32(self.expected))


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

    @property
    def train_loss(self) -> float | None:
        return self.loss / self.examples if self.examples else None
