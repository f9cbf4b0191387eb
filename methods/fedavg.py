"""FedAvg and Local SGD (docs/algorithms.md section 1).

Client i starts from x, runs H local SGD steps x_i <- x_i - gamma g_i(x_i) (or E epochs) and
sends delta_i = x - x_i, optionally compressed with error feedback; the server applies
x <- x - eta_s * sum_i w_i delta_i / sum_i w_i with w_i the client's example count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from fedsim.codecs import check_codec_spec, codec, roundtrip, with_feedback
from fedsim.method import (
    AGGREGATIONS,
    Aggregate,
    Downlink,
    FederatedMethod,
    Oracle,
    Params,
    Received,
    Supports,
    Upload,
    register_method,
)

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.
if TYPE_CHECKING:
    from torch import Tensor


class LocalSGDParams(Params):
    """Local SGD / FedAvg hyperparameters: give local_steps (H) or local_epochs (E)."""

    local_steps: int = Field(10, ge=0, description="H local steps per round")
    local_epochs: int = Field(0, ge=0, description="E passes over the local data per round")
    batch_size: int = Field(32, ge=0, description="0 means full-batch gradients")
    client_lr: float = Field(0.1, gt=0, description="gamma: the local SGD step size")
    server_lr: float = Field(
        1.0, gt=0, description="eta_s: the new model is x - eta_s * the mean upload x - x_i"
    )
    uplink: str = Field("fp32", description="wire format of the model delta (a codec spec)")
    error_feedback: bool = Field(False, description="add the last compression error back")
    downlink: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="the model's format")

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


class FedAvgParams(LocalSGDParams):
    """FedAvg defaults: one local epoch per round."""

    local_steps: int = Field(0, ge=0, description="H local steps per round")
    local_epochs: int = Field(1, ge=0, description="E passes over the local data per round")


def local_steps(p: LocalSGDParams, n: int) -> int:
    """Local steps in a round: `local_steps`, or `local_epochs` passes over n examples."""
    if p.local_steps:
        return p.local_steps
    return p.local_epochs * math.ceil(n / (p.batch_size or n))


def sgd(f: Oracle, x: Tensor, p: LocalSGDParams, rngs) -> tuple[Tensor, Tensor, Tensor]:
    """The round's local SGD steps on x ([C, d]) in place; per client: mean loss, steps,
    examples processed."""
    import torch

    f.bind(x)
    steps = [local_steps(p, n) for n in f.sizes]
    total = work = torch.zeros(len(steps), dtype=torch.float64)
    for batch in f.batches(p.batch_size, steps, rngs):
        total = total + f.sgd_step(batch, p.client_lr)
        work = work + f.work(batch)
    count = torch.tensor(steps, dtype=torch.float64)
    return total / count.clamp(min=1), count, work


@dataclass(frozen=True)
class ServerState:
    x: Tensor


@dataclass(frozen=True)
class ClientState:
    e: Tensor | None = None  # the error-feedback memory


def compressed(p: LocalSGDParams, delta: Tensor, e: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """What the client sends in the uplink format, through error feedback when asked for,
    and the new error memory."""
    if not p.error_feedback:
        return delta, None
    return with_feedback(delta, e, p.uplink)


@register_method
class LocalSGD(FederatedMethod[LocalSGDParams, ClientState, ServerState]):
    name = "local_sgd"
    doc = "Local SGD: H local SGD steps, server step size eta_s"
    params = LocalSGDParams
    client_state = ClientState
    supports = Supports(fedbuff=True, aggregation=frozenset(AGGREGATIONS))

    def server_init(self, p, x0, num_clients, seed):
        return ServerState(x0)

    def broadcast(self, p, s, rnd):
        """The model in the downlink format; the server too keeps the rounded x."""
        x = s.x if p.downlink == "fp32" else roundtrip(s.x, p.downlink)
        return replace(s, x=x), Downlink(x, codec=p.downlink)

    def client_init(self, p, down):
        import torch

        return ClientState(torch.zeros_like(down.vector)) if p.error_feedback else None

    def client_round(self, p, down: Received, c, f, rngs):
        x0 = down.vector.clone()
        loss, steps, work = sgd(f, down.vector, p, rngs)
        sent, e = compressed(p, x0 - down.vector, None if c is None else c.e)
        upload = Upload(sent, loss, steps, work, weight=f.n, codec=p.uplink)
        return upload, None if e is None else ClientState(e)

    def server_step(self, p, s, agg: Aggregate, rnd):
        return ServerState(s.x - p.server_lr * agg.vector)

    def planned_grad_evals(self, p, n, rounds, seed):
        return rounds * local_steps(p, n)


@register_method
class FedAvg(LocalSGD):
    name = "fedavg"
    doc = "FedAvg: E local epochs of SGD, example-weighted average"
    params = FedAvgParams
