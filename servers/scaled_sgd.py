"""Local SGD with scaling, server half (ALGORITHMS.md section 2).

x is FedAvg's weighted mean of the local models; the clients' statistics s_i are
averaged as the replies stream past; then v <- beta v + (1 - beta) mean_i s_i (v starts at
the first round's mean) and D_hat = max(alpha, sqrt(v)) (Adam, RMSProp) or
max(alpha, |v|) (OASIS), broadcast with the model (2d floats each way). D_hat = 1 in
round 1. `none` keeps D_hat = 1 and sends nothing extra: plain Local SGD, the baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from pydantic import Field

from fedsim.algorithms import SERVER_HALVES, ServerHalf
from fedsim.codecs import VECTOR_KEY, pack, unpack

from .aggregate import WeightedSum
from .fedavg import FedAvg, LocalSGDParams

STATISTIC, PRECONDITIONER = "stat", "dhat"  # side arrays: s_i up, D_hat down


class ScaledParams(LocalSGDParams):
    preconditioner: Literal["none", "adam", "rmsprop", "oasis"] = "rmsprop"
    variant: Literal["global", "local"] = Field("global", description="local: ablation")
    beta: float = Field(0.999, ge=0, lt=1, description="statistic's moving average")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first moment (reset each sync)")
    alpha: float = Field(1e-8, gt=0, description="lower bound on D_hat")


def precondition(v: np.ndarray, kind: str, alpha: float) -> np.ndarray:
    """D_hat from the averaged statistic."""
    return np.maximum(alpha, np.abs(v) if kind == "oasis" else np.sqrt(np.maximum(v, 0)))


class ScaledLocalSGD(FedAvg):
    def __init__(self, scenario, partitions) -> None:
        super().__init__(scenario, partitions)
        self.v: np.ndarray | None = None
        self.d: np.ndarray | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.scenario.algorithm.preconditioner == "none":
            return super().configure_train(server_round, arrays, config, grid)
        x = arrays[VECTOR_KEY]
        if self.d is None:
            self.d = np.ones(unpack(x).shape, dtype=np.float32)
        down = ArrayRecord({VECTOR_KEY: x, PRECONDITIONER: pack(self.d)})
        return super().configure_train(server_round, down, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        stats = WeightedSum()

        def tap() -> Iterator[Message]:
            for msg in replies:
                if not msg.has_error() and STATISTIC in msg.content["arrays"]:
                    stats.add(unpack(msg.content["arrays"][STATISTIC]), 1.0)
                yield msg

        arrays, metrics = super().aggregate_train(server_round, tap())
        if arrays is not None and stats.weight:
            p, s = self.scenario.algorithm, stats.mean().astype(np.float64)
            self.v = s if self.v is None else p.beta * self.v + (1 - p.beta) * s
            self.d = precondition(self.v, p.preconditioner, p.alpha).astype(np.float32)
        return arrays, metrics

    def state_dict(self) -> dict:
        return super().state_dict() | {"v": self.v, "d": self.d}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.v, self.d = state["v"], state["d"]


_doc = "Local SGD with scaling: Adam/RMSProp/OASIS preconditioner fixed between syncs"
SERVER_HALVES.register("scaled_sgd", ServerHalf(ScaledParams, ScaledLocalSGD, _doc), _doc)
