"""FedAvg / Local SGD, server half (ALGORITHMS.md section 1).

x <- x - eta_s * sum_i w_i delta_i / sum_i w_i, with w_i the client's example
count; a running weighted sum over replies taken in partition order, so every
runtime adds them up in the same order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from pydantic import Field, field_validator, model_validator

from fedsim.algorithms import MODEL_CODEC, SERVER_HALVES, AlgorithmParams, ServerHalf
from fedsim.codecs import CODECS, check_codec_spec, codec
from fedsim.config import Scenario, client_spec
from fedsim.heterogeneity import invitations
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.mechanisms import clip, gaussian
from fedsim.seeding import derive_seed

from .aggregate import ClientMetrics, aggregator, in_cohort_order
from .nodes import cohort_size, sample_partitions

DP_STREAM = 51


class LocalSGDParams(AlgorithmParams):
    """Local SGD / FedAvg hyperparameters: give local_steps (H) or local_epochs (E)."""

    local_steps: int = Field(10, ge=0, description="H local steps per round")
    local_epochs: int = Field(0, ge=0, description="E passes over the local data per round")
    batch_size: int = Field(32, ge=0, description="0 means full-batch gradients")
    client_lr: float = Field(0.1, gt=0)
    server_lr: float = Field(1.0, gt=0)
    uplink: str = Field("fp32", description="wire format of the model delta (a codec spec)")
    error_feedback: bool = Field(False, description="add the last compression error back")
    downlink: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="the model's format")
    aggregation: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: share cut at each end")

    @field_validator("uplink")
    @classmethod
    def _known_codec(cls, spec: str) -> str:
        return check_codec_spec(spec)

    @model_validator(mode="after")
    def _feedback_needs_a_deterministic_codec(self) -> LocalSGDParams:
        if self.error_feedback and codec(self.uplink).random:
            raise ValueError(
                f"error_feedback needs a deterministic uplink codec, not {self.uplink!r}"
                " (error feedback is for biased compressors: sign, scaled_sign, topk, fp16)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _budget_given(cls, data: dict) -> dict:
        """Giving only one of local_steps / local_epochs switches the other off."""
        if isinstance(data, dict) and ("local_steps" in data) != ("local_epochs" in data):
            other = "local_epochs" if "local_steps" in data else "local_steps"
            data = {**data, other: 0}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> LocalSGDParams:
        if (self.local_steps > 0) == (self.local_epochs > 0):
            raise ValueError(
                f"set exactly one of local_steps and local_epochs (got {self.local_steps}"
                f" and {self.local_epochs})"
            )
        return self


class FedAvg(FlowerFedAvg):
    """Flower's FedAvg with fedsim's sampling (by partition, seeded) and delta aggregation."""

    def __init__(self, scenario: Scenario, partitions: dict[int, int]) -> None:
        p = scenario.algorithm
        super().__init__(
            fraction_train=p.fraction,
            min_train_nodes=p.min_clients,
            min_available_nodes=len(partitions),
        )
        self.scenario, self.partitions = scenario, partitions
        self.server_lr = getattr(p, "server_lr", 1.0)
        self.spec = client_spec(scenario)
        self.codec = CODECS.get("fp32")  # the model between the round loop and the strategy
        self.uplink = codec(getattr(p, "uplink", "fp32"))
        self.downlink = codec(getattr(p, "downlink", "fp32"))
        self.x: np.ndarray | None = None
        self.round = 0  # the round being configured or aggregated
        self.eligible = list(partitions)  # available partitions; the round loop updates it
        self.cohort: list[int] = []  # node ids invited this round, in partition order
        self.aggregated: list[int] = []  # partitions the last applied average used
        self.last_applied = 0  # the round of that average
        self.target = 0  # replies the round needs (fewer than invited under overcommit)
        self.noisy_rounds = 0  # DP-FedAvg: rounds whose average carried noise

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the cohort and send each client the model and the round config."""
        self.x, self.round = self.codec.decode(arrays), server_round
        if self.downlink.spec != "fp32":  # everyone, the server included, uses the rounded x
            arrays = self.downlink.encode(self.x)
            self.x = self.downlink.decode(arrays)
        s, p = self.scenario, self.scenario.algorithm
        self.target = cohort_size(len(self.eligible), p.fraction, p.min_clients)
        invite = min(len(self.eligible), invitations(s.system, self.target))
        cohort = sample_partitions(self.eligible, invite, s.seed, server_round)
        self.cohort = [self.partitions[pid] for pid in cohort]
        extra = self.round_config(server_round)
        config = ConfigRecord(
            {
                **config,
                **extra,
                "server-round": server_round,
                "spec": self.spec,
                MODEL_CODEC: self.downlink.spec,
            }
        )
        train = MessageType.TRAIN
        return [
            Message(self.content(n, arrays, config), dst_node_id=n, message_type=train)
            for n in self.cohort
        ]

    def content(self, node: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """What node `node` is sent: the model and the round config."""
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})

    def round_config(self, server_round: int) -> dict:
        """Method-specific entries of the round's config (shared by the whole cohort)."""
        return {}

    def weight(self, metrics: MetricRecord) -> float:
        """A reply's weight in the average: its example count (FedAvg)."""
        return float(metrics["num-examples"])

    def state_dict(self) -> dict:
        """Server-side state a checkpoint must keep besides the model."""
        return {
            "aggregated": list(self.aggregated),
            "last_applied": self.last_applied,
            "noisy_rounds": self.noisy_rounds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""
        self.aggregated, self.last_applied = list(state["aggregated"]), state["last_applied"]
        self.noisy_rounds = state.get("noisy_rounds", 0)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: fedsim evaluates the global model on the server."""
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply the example-weighted mean of the client deltas with the server step size."""
        p, private = self.scenario.algorithm, self.scenario.privacy.mechanism == "dp_fedavg"
        deltas = aggregator(getattr(p, "aggregation", "mean"), getattr(p, "trim", 0.0))
        metrics, used = ClientMetrics(), []
        for msg in in_cohort_order(replies, self.cohort):
            if msg.has_error():
                continue
            m, update = msg.content["metrics"], self.update_of(msg)
            metrics.add(m)
            if not np.isfinite(update).all():  # NaN or inf: never let it into the model
                metrics.rejected += 1
                continue
            used.append(int(m["partition-id"]))
            if private:  # client-level DP: every update clipped to C, all weighing the same
                deltas.add(clip(update, self.scenario.privacy.max_grad_norm), 1.0)
            else:
                deltas.add(update, self.weight(m))
        if not self.accept(len(used)):
            return None, metrics.record()  # the model stays; the round is void
        self.aggregated, self.last_applied = used, server_round
        mean = self.noisy_mean(deltas, metrics) if private else deltas.mean()
        return self.codec.encode(self.step(mean)), metrics.record()

    def noisy_mean(self, deltas, metrics: ClientMetrics) -> np.ndarray:
        """DP-FedAvg: (sum_i clip(delta_i) + N(0, sigma^2 C^2)) / m, m the cohort size; the
        server's epsilon after this round (sample rate: algorithm.fraction)."""
        priv, m = self.scenario.privacy, len(self.cohort)
        rng = np.random.default_rng(derive_seed(self.scenario.seed, self.round, DP_STREAM))
        std = priv.noise_multiplier * priv.max_grad_norm
        total = deltas.mean() * np.float32(deltas.weight)
        self.noisy_rounds += 1
        q = self.scenario.algorithm.fraction
        metrics.epsilon = epsilon(
            priv.accountant, priv.noise_multiplier, q, self.noisy_rounds, priv.delta
        )
        return gaussian(total, std, rng) / np.float32(m)

    def update_of(self, reply: Message) -> np.ndarray:
        """A reply's update vector (the model delta x - x_i for FedAvg)."""
        return self.uplink.decode(reply.content["arrays"])

    def step(self, mean: np.ndarray) -> np.ndarray:
        """The new model from the weighted mean of the updates."""
        return self.x - np.float32(self.server_lr) * mean

    def accept(self, replies: int) -> bool:
        """Whether a round with this many usable replies updates the model (one will do)."""
        return replies > 0


class FedAvgParams(LocalSGDParams):
    """FedAvg defaults: one local epoch per round."""

    local_steps: int = Field(0, ge=0, description="H local steps per round")
    local_epochs: int = Field(1, ge=0, description="E passes over the local data per round")


for _name, _params, _doc in (
    ("fedavg", FedAvgParams, "FedAvg: E local epochs of SGD, example-weighted average"),
    ("local_sgd", LocalSGDParams, "Local SGD: H local SGD steps, server step size eta_s"),
):
    SERVER_HALVES.register(_name, ServerHalf(_params, FedAvg, _doc), _doc)
