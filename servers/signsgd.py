"""signSGD and Signum with majority vote, and EF-SignSGD, server half (ALGORITHMS.md section 5).

Clients hold the model. A client that holds the last round's model is sent only that
round's step, compressed (the vote as ternary digits, 1.6 bits a coordinate; EF-SignSGD's
step with a server error memory as d bits + one float) and applies it itself,
x <- x - lr (w + weight_decay x), exactly as the server does; any other client (new, or it
missed a round) is sent the whole model, and the bytes say so. A client that is sent a step
for a model it does not hold fails loudly rather than drift.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from pydantic import Field

from fedsim.algorithms import MODEL_CODEC, SERVER_HALVES, AlgorithmParams, ServerHalf
from fedsim.codecs import codec, with_feedback

from .fedavg import FedAvg

STEP_ROUND, STEP_CODEC, STEP_LR, WEIGHT_DECAY = "step-round", "step-codec", "step-lr", "wd"


def scheduled(lr: float, schedule: str, server_round: int) -> float:
    """The step size of a round: constant, or lr / sqrt(round)."""
    return lr if schedule == "constant" else lr / float(np.sqrt(server_round))


def apply_step(x: np.ndarray, w: np.ndarray, lr: float, weight_decay: float) -> np.ndarray:
    """x - lr (w + weight_decay x) in float32: the server and every client compute it alike."""
    x = np.asarray(x, dtype=np.float32)
    return x - np.float32(lr) * (w + np.float32(weight_decay) * x)


def vote(mean_of_signs: np.ndarray) -> np.ndarray:
    """sign(sum_i sign(g_i)): +1, -1, or 0 on a tie (the mean of +-1s is exact in float32)."""
    return np.sign(mean_of_signs).astype(np.float32)


class SignParams(AlgorithmParams):
    """signSGD-MV and Signum-MV: one stochastic gradient per client per round."""

    batch_size: int = Field(32, ge=0, description="0: full gradients")
    server_lr: float = Field(1e-3, gt=0, description="delta: every coordinate moves by it")
    schedule: Literal["constant", "inv_sqrt"] = "constant"
    weight_decay: float = Field(0.0, ge=0, description="applied after the vote")
    momentum: float = Field(0.0, ge=0, lt=1, description="Signum's beta (0: signSGD)")
    broadcast: Literal["step", "model"] = Field("step", description="send the vote or the model")


class SignumParams(SignParams):
    momentum: float = Field(0.9, ge=0, lt=1, description="Signum's beta")


class EFSignParams(AlgorithmParams):
    """EF-SignSGD: clients send (||p||_1/d) sign(p) of p = gamma g + e and keep e."""

    batch_size: int = Field(32, ge=0, description="0: full gradients")
    client_lr: float = Field(0.01, gt=0, description="gamma")
    schedule: Literal["constant", "inv_sqrt"] = "constant"
    server_memory: bool = Field(True, description="compress the averaged step too (1-bit down)")
    broadcast: Literal["step", "model"] = Field("step", description="send the step or the model")


class ClientHeldModel(FedAvg):
    """FedAvg's sampling and running sum, for methods whose clients keep the model between
    rounds and are sent each round's step; subclasses say what the step is."""

    step_codec = "fp32"

    def __init__(self, scenario, partitions) -> None:
        super().__init__(scenario, partitions)
        self.holds: dict[int, int] = {}  # node -> round of the model it holds
        self.sent_step: ArrayRecord | None = None  # the last applied round's step, encoded
        self.step_config: dict = {}

    def weight(self, metrics: MetricRecord) -> float:
        return 1.0  # one vote per client

    def content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """The step if `node` holds the last round's model, else the model."""
        up_to_date = self.holds.get(node) == self.last_applied == self.round - 1
        self.holds[node] = self.round
        if not up_to_date or self.sent_step is None:
            return super().content(node, arrays, config)
        step = ConfigRecord({**config, MODEL_CODEC: "", **self.step_config})
        return RecordDict({self.arrayrecord_key: self.sent_step, self.configrecord_key: step})

    def aggregate_train(self, server_round: int, replies):
        seen = set()

        def tap():
            for msg in replies:
                seen.add(msg.metadata.src_node_id)
                yield msg

        result = super().aggregate_train(server_round, tap())
        for node in set(self.cohort) - seen:  # failed, late or lost: resend the whole model
            self.holds.pop(node, None)
        return result

    def step(self, mean: np.ndarray) -> np.ndarray:
        w, lr, wd = self.server_step(mean)
        if self.scenario.algorithm.broadcast == "step":
            self.sent_step = codec(self.step_codec).encode(w)
            w = codec(self.step_codec).decode(self.sent_step)  # apply what the clients get
        self.step_config = {
            STEP_ROUND: self.round,
            STEP_CODEC: self.step_codec,
            STEP_LR: lr,
            WEIGHT_DECAY: wd,
        }
        return apply_step(self.x, w, lr, wd)

    @abstractmethod
    def server_step(self, mean: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(w, lr, weight decay) of x <- x - lr (w + wd x) from the mean of the updates."""

    def state_dict(self) -> dict:
        return super().state_dict() | {
            "holds": dict(self.holds),
            "sent_step": self.sent_step,
            "step_config": dict(self.step_config),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.holds, self.sent_step = dict(state["holds"]), state["sent_step"]
        self.step_config = dict(state["step_config"])


class MajorityVote(ClientHeldModel):
    """x <- x - delta (sign(sum_i sign(g_i)) + weight_decay x); the tie vote is 0."""

    step_codec = "ternary"

    def __init__(self, scenario, partitions) -> None:
        super().__init__(scenario, partitions)
        self.uplink = codec("sign")

    def server_step(self, mean: np.ndarray) -> tuple[np.ndarray, float, float]:
        a = self.scenario.algorithm
        return vote(mean), scheduled(a.server_lr, a.schedule, self.round), a.weight_decay


class EFSign(ClientHeldModel):
    """x <- x - mean_i Delta_i; with a server memory e the step is (||p||_1/d) sign(p) of
    p = mean_i Delta_i + e, and e <- p - step (a 1-bit downlink)."""

    step_codec = "scaled_sign"

    def __init__(self, scenario, partitions) -> None:
        super().__init__(scenario, partitions)
        self.uplink = codec("scaled_sign")
        self.memory: np.ndarray | None = None
        if not scenario.algorithm.server_memory:
            self.step_codec = "fp32"

    def server_step(self, mean: np.ndarray) -> tuple[np.ndarray, float, float]:
        if not self.scenario.algorithm.server_memory:
            return mean, 1.0, 0.0
        w, self.memory = with_feedback(mean, self.memory, "scaled_sign")
        return w, 1.0, 0.0

    def state_dict(self) -> dict:
        return super().state_dict() | {"memory": self.memory}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory = state["memory"]


for _name, _params, _strategy, _doc in (
    ("signsgd_mv", SignParams, MajorityVote, "signSGD: 1-bit gradients, majority vote"),
    ("signum_mv", SignumParams, MajorityVote, "Signum: 1-bit momenta, majority vote"),
    ("ef_signsgd", EFSignParams, EFSign, "EF-SignSGD: scaled signs with error feedback"),
):
    SERVER_HALVES.register(_name, ServerHalf(_params, _strategy, _doc), _doc)
