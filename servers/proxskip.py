"""ProxSkip / Scaffnew, GradSkip and GradSkip+, server half (ALGORITHMS.md sections 3, 4).

Each round the server draws K ~ Geometric(p) from (seed, round): every client runs K
local iterations, the last ending in the communication. Clients send
x_hat_i - tau h_hat_i (as a delta from x) and the server takes the prox of their plain mean,
tau = gamma (1 + omega).

GradSkip+ replaces the communication coin by C_omega = Bernoulli(p) times rand-k (k = c d
coordinates drawn from the round seed, scaled d/k; 1 + omega = d / (p k)): a communication
averages those k coordinates only, each client keeps its own values elsewhere, and the
messages up carry k floats. The consensus prox may add a separable regularizer R (l1 or l2)
applied to the average. c = 1 and R = 0 is ProxSkip/GradSkip.

Failure policy (the method assumes full participation): a round in which any sampled
client's reply is missing is void. The server keeps x, and the next round's config names
the last applied round and the partitions it averaged. A client applies
h_i += (p/gamma)(x - x_hat_i) only if its x_hat_i was averaged in that round, and
otherwise discards x_hat_i, so a void round leaves every client's state as if it never
ran: sum_i h_i = 0 always holds, and a failure costs time, not accuracy. Void rounds
show as `updated: false` in metrics.jsonl, with their `failures` and `dropouts`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from flwr.app import MetricRecord
from pydantic import Field, field_validator, model_validator

from fedsim.algorithms import SERVER_HALVES, AlgorithmParams, ServerHalf
from fedsim.config import Scenario
from fedsim.seeding import derive_seed, shared_coordinates

from .evaluate import client_constants
from .fedavg import FedAvg

COIN_STREAM, COORDINATE_STREAM = 31, 32


class ProxSkipParams(AlgorithmParams):
    """gamma (client_lr), the communication probability p, GradSkip's q_i, GradSkip+'s
    rand-k fractions and regularizer."""

    p: Annotated[float, Field(gt=0, le=1)] | Literal["1/sqrt(kappa)"] = Field(
        0.1, description="probability of communicating per iteration (theory: 1/sqrt(kappa))"
    )
    client_lr: Annotated[float, Field(gt=0)] | Literal["1/L"] = Field(
        0.1, description="gamma (theory: 1/L_max)"
    )
    batch_size: int = Field(0, ge=0, description="0: full gradients")
    q: float | list[float] | Literal["theory"] = Field(
        1.0, description="GradSkip: P(keep computing); 1 = ProxSkip; 'theory' from kappa_i"
    )

    @field_validator("q")
    @classmethod
    def _probabilities(cls, v: float | list[float] | str) -> float | list[float] | str:
        if v == "theory":
            return v
        if any(not 0 < x <= 1 for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"{v} must lie in (0, 1]")
        return v

    comm_density: float = Field(
        1.0, gt=0, le=1, description="GradSkip+: fraction of coordinates a communication averages"
    )
    skip_density: float = Field(
        1.0, gt=0, le=1, description="GradSkip+: fraction of coordinates a local step moves"
    )
    regularizer: Literal["none", "l1", "l2"] = Field("none", description="R in the prox")
    reg: float = Field(0.0, ge=0, description="lambda: R = lambda ||x||_1 or (lambda/2)||x||^2")

    @model_validator(mode="after")
    def _full_participation(self) -> ProxSkipParams:
        if self.comm_density < 1 and self.fraction < 1:
            raise ValueError(
                f"comm_density {self.comm_density} < 1 needs fraction = 1 (got {self.fraction}):"
                " clients keep their own uncommunicated coordinates"
            )
        return self


def consensus_step(params: ProxSkipParams | object, d: int) -> float:
    """tau = gamma (1 + omega) = gamma d / (p k): the prox step of a communication."""
    k = max(1, round(params.comm_density * d))
    return params.client_lr * d / (params.p * k)


def communicated(params: ProxSkipParams | object, d: int, seed: int, server_round: int):
    """The coordinates a round's communication averages (None: all)."""
    return shared_coordinates(params.comm_density, d, seed, server_round, COORDINATE_STREAM)


def prox(kind: str, v: np.ndarray, t: float) -> np.ndarray:
    """prox_{tR}(v) for R = 0, ||.||_1 (soft thresholding) or (1/2)||.||^2 (shrinking)."""
    if kind == "l1":
        return np.sign(v) * np.maximum(np.abs(v) - t, 0)
    return v / (1 + t) if kind == "l2" else v


def round_length(p: float, seed: int, server_round: int) -> int:
    """K ~ Geometric(p) on {1, 2, ...}: iterations until the shared coin says communicate."""
    return int(np.random.default_rng(derive_seed(seed, server_round, COIN_STREAM)).geometric(p))


THEORY = {"client_lr": "1/L", "p": "1/sqrt(kappa)", "q": "theory"}


def theory_settings(scenario: Scenario) -> Scenario:
    """The theory's gamma = 1/L_max, p = 1/sqrt(kappa_max) and GradSkip's
    q_i = (1 - 1/kappa_i) / (1 - 1/kappa_max) (well-conditioned clients skip more), with
    kappa_i = L_i / mu_i, wherever the scenario asks for them."""
    a = scenario.algorithm
    wanted = [k for k, v in THEORY.items() if getattr(a, k) == v]
    if not wanted:
        return scenario
    constants = client_constants(scenario)
    if constants is None or min(constants[1]) <= 0:
        raise ValueError(
            f"algorithm.{wanted[0]}: {THEORY[wanted[0]]!r} needs a strongly convex problem"
            " (bias-free binary logistic regression with l2 > 0)"
        )
    smooth, mu = constants
    kappa = [big / small for big, small in zip(smooth, mu, strict=True)]
    k_max = max(kappa)
    theory = {
        "client_lr": float(1.0 / max(smooth)),
        "p": float(min(1.0, 1.0 / math.sqrt(k_max))),
        "q": [float((1 - 1 / k) / (1 - 1 / k_max)) if k_max > 1 else 1.0 for k in kappa],
    }
    update = {k: theory[k] for k in wanted}
    return scenario.model_copy(update={"algorithm": a.model_copy(update=update)})


class ProxSkip(FedAvg):
    """FedAvg's sampling and running sum with uniform weights, eta_s = 1 and the shared K."""

    def __init__(self, scenario, partitions) -> None:
        super().__init__(scenario, partitions)
        self.server_lr = 1.0
        q = scenario.algorithm.q
        self.q = q if isinstance(q, list) else [q] * len(partitions)
        if len(self.q) != len(partitions):
            raise ValueError(f"algorithm.q: needs one value per client ({len(partitions)})")

    def round_config(self, server_round: int) -> dict:
        p, seed = self.scenario.algorithm.p, self.scenario.seed
        return {
            "local_steps": round_length(p, seed, server_round),
            "q": self.q,
            "aggregated": self.aggregated,  # partitions of the last applied average
            "last-applied": self.last_applied,
        }

    def accept(self, replies: int) -> bool:
        return replies == len(self.cohort)  # a partial average would break sum_i h_i = 0

    def step(self, mean: np.ndarray) -> np.ndarray:
        """x <- prox_{tau R}(mean_i (x_hat_i - tau h_hat_i)) on the communicated coordinates."""
        a = self.scenario.algorithm
        idx = communicated(a, self.x.size, self.scenario.seed, self.round)
        x = np.array(self.x)
        z = (x if idx is None else x[idx]) - mean
        z = prox(a.regularizer, z, consensus_step(a, x.size) * a.reg).astype(np.float32)
        if idx is None:
            return z
        x[idx] = z
        return x

    def weight(self, metrics: MetricRecord) -> float:
        return 1.0  # the consensus average is over clients, not examples


for _name, _doc in (
    ("proxskip", "ProxSkip / Scaffnew: K ~ Geom(p) local steps, control variates"),
    ("gradskip", "GradSkip: ProxSkip where client i stops computing w.p. 1 - q_i"),
    ("gradskip_plus", "GradSkip+: rand-k compression operators for both coins, general prox"),
):
    SERVER_HALVES.register(_name, ServerHalf(ProxSkipParams, ProxSkip, _doc, theory_settings), _doc)
