"""signSGD and Signum with majority vote, and EF-SignSGD (docs/algorithms.md section 5).

Each round a client takes one stochastic gradient g at the model: signSGD sends sign(g),
Signum sign(m) with m <- beta m + (1 - beta) g, EF-SignSGD the scaled sign of p = gamma g + e,
keeping e <- p - (||p||_1/d) sign(p). The server moves x <- x - lr (w + wd x) with w the vote
sign(sum_i sign_i) (a tie votes 0), or for EF the mean (with a server memory: its scaled sign).

Clients keep the model they trained from. A client that holds the last applied round's model
is sent only that round's step, compressed (the vote as ternary digits, EF's step as a scaled
sign) and applies it with the very float32 arithmetic the server used; any other client is
sent the model. A client sent a step for a model it does not hold stops the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedsim.codecs import roundtrip, with_feedback
from fedsim.method import Downlink, FederatedMethod, Params, Received, Upload, register_method

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.
if TYPE_CHECKING:
    from torch import Tensor

STEP_ROUND, STEP_LR, WEIGHT_DECAY = "step-round", "step-lr", "wd"


class SignParams(Params):
    """signSGD-MV and Signum-MV: one stochastic gradient per client per round."""

    batch_size: int = Field(32, ge=0, description="0: full gradients")
    server_lr: float = Field(1e-3, gt=0, description="delta: every coordinate moves by it")
    schedule: Literal["constant", "inv_sqrt"] = Field(
        "constant", description="server_lr in every round, or server_lr / sqrt(round)"
    )
    weight_decay: float = Field(0.0, ge=0, description="applied after the vote")
    momentum: float = Field(0.0, ge=0, lt=1, description="Signum's beta (0: signSGD)")
    broadcast: Literal["step", "model"] = Field("step", description="send the vote or the model")


class SignumParams(SignParams):
    momentum: float = Field(0.9, ge=0, lt=1, description="Signum's beta")


class EFSignParams(Params):
    """EF-SignSGD: clients send (||p||_1/d) sign(p) of p = gamma g + e and keep e."""

    batch_size: int = Field(32, ge=0, description="0: full gradients")
    client_lr: float = Field(0.01, gt=0, description="gamma")
    schedule: Literal["constant", "inv_sqrt"] = Field(
        "constant", description="client_lr in every round, or client_lr / sqrt(round)"
    )
    server_memory: bool = Field(True, description="compress the averaged step too (1-bit down)")
    broadcast: Literal["step", "model"] = Field("step", description="send the step or the model")


def scheduled(lr: float, schedule: str, rnd: int) -> float:
    """The step size of a round: constant, or lr / sqrt(round)."""
    return lr if schedule == "constant" else lr / math.sqrt(rnd)


def apply_step(x: Tensor, w: Tensor, lr: float, weight_decay: float) -> Tensor:
    """x - lr (w + weight_decay x) in float32: the server and every client compute it alike."""
    return x - lr * (w + weight_decay * x)


def vote(mean_of_signs: Tensor) -> Tensor:
    """sign(sum_i sign(g_i)): +1, -1, or 0 on a tie (the mean of +-1s is exact in float32)."""
    import torch

    return torch.sign(mean_of_signs)


@dataclass(frozen=True)
class ServerState:
    x: Tensor
    step: Tensor | None = None  # the last applied step w, as the clients decode it
    lr: float = 0.0
    weight_decay: float = 0.0
    applied: int = 0  # its round
    holders: list[int] | None = None  # partitions that hold that round's starting model
    memory: Tensor | None = None  # EF-SignSGD's server error memory


@dataclass(frozen=True)
class ClientState:
    x: Tensor  # the model the client trained from in its last round
    round: int
    m: Tensor | None = None  # Signum's momentum
    e: Tensor | None = None  # EF-SignSGD's error memory


def held_model(down: Received, c: ClientState) -> Tensor:
    """This round's models: as sent, or the held ones stepped (written into down.vector)."""
    if STEP_ROUND not in down.config:
        return down.vector
    wrong = (c.round != down.config[STEP_ROUND]).nonzero().flatten().tolist()
    if wrong:
        raise RuntimeError(
            f"partition {down.partitions[wrong[0]]} holds the model of round"
            f" {int(c.round[wrong[0]])}, was sent the step of round {down.config[STEP_ROUND]}"
        )
    x = apply_step(c.x, down.vector, down.config[STEP_LR], down.config[WEIGHT_DECAY])
    return down.vector.copy_(x)


def one_gradient(p, down: Received, c, f, rngs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(losses, gradients, examples, models) on one minibatch at this round's models."""
    x = held_model(down, c)
    f.bind(x)
    (batch,) = f.batches(p.batch_size, 1, rngs)
    loss, g = f.loss_grad(batch)
    return loss, g, f.work(batch), x.clone()


class ClientHeldModel(FederatedMethod):
    """The shared downlink of the sign methods: a step to the clients that hold the last
    applied round's model (with `broadcast = "step"`), the model to everyone else."""

    client_state = ClientState
    step_codec = "fp32"

    def server_init(self, p, x0, num_clients, seed):
        return ServerState(x0)

    def client_init(self, p, down):
        """A new client is always sent the model (it holds none)."""
        import torch

        zeros = torch.zeros_like(down.vector)
        m = zeros if getattr(p, "momentum", 0.0) else None
        e = zeros.clone() if isinstance(p, EFSignParams) else None
        rounds = torch.zeros(len(down.partitions), dtype=torch.long)
        return ClientState(down.vector.clone(), rounds, m=m, e=e)

    def personalize(self, p, s, rnd, pid, down):
        if p.broadcast != "step" or s.step is None or s.applied != rnd - 1:
            return down
        if pid not in s.holders:
            return down
        config = {STEP_ROUND: s.applied, STEP_LR: s.lr, WEIGHT_DECAY: s.weight_decay}
        return Downlink(s.step, codec=self.step_codec_of(p), config=config)

    def step_codec_of(self, p) -> str:
        return self.step_codec

    def applied(self, p, s: ServerState, w: Tensor, lr: float, wd: float, agg, rnd, **kw):
        """The state after x <- x - lr (w + wd x), w as the clients will decode it."""
        if p.broadcast == "step":
            w = roundtrip(w, self.step_codec_of(p))
        x = apply_step(s.x, w, lr, wd)
        return replace(s, x=x, step=w, lr=lr, weight_decay=wd, applied=rnd, holders=agg.used, **kw)


@register_method
class SignSGD(ClientHeldModel):
    name = "signsgd_mv"
    doc = "signSGD: 1-bit gradients, majority vote"
    params = SignParams
    step_codec = "ternary"

    def client_round(self, p, down, c, f, rngs):
        import torch

        loss, g, work, x = one_gradient(p, down, c, f, rngs)
        m = None
        if p.momentum:  # Signum: the momentum is what gets signed
            m = c.m.clone()
            g = m.mul_(p.momentum).add_(g, alpha=1 - p.momentum)
        rounds = torch.full((len(rngs),), down.round)
        return Upload(g, loss, torch.ones_like(loss), work, codec="sign"), ClientState(
            x, rounds, m=m
        )

    def server_step(self, p, s, agg, rnd):
        lr = scheduled(p.server_lr, p.schedule, rnd)
        return self.applied(p, s, vote(agg.vector), lr, p.weight_decay, agg, rnd)


@register_method
class Signum(SignSGD):
    name = "signum_mv"
    doc = "Signum: 1-bit momenta, majority vote"
    params = SignumParams


@register_method
class EFSignSGD(ClientHeldModel):
    name = "ef_signsgd"
    doc = "EF-SignSGD: scaled signs with error feedback"
    params = EFSignParams

    def step_codec_of(self, p):
        return "scaled_sign" if p.server_memory else "fp32"

    def client_round(self, p, down, c, f, rngs):
        import torch

        loss, g, work, x = one_gradient(p, down, c, f, rngs)
        gamma = scheduled(p.client_lr, p.schedule, down.round)
        sent, e = with_feedback(gamma * g, c.e, "scaled_sign")
        rounds = torch.full((len(rngs),), down.round)
        upload = Upload(sent, loss, torch.ones_like(loss), work, codec="scaled_sign")
        return upload, ClientState(x, rounds, e=e)

    def server_step(self, p, s, agg, rnd):
        """x <- x - mean_i Delta_i; with a server memory e the step is the scaled sign of
        p = mean_i Delta_i + e, and e <- p - step (a 1-bit downlink)."""
        if not p.server_memory:
            return self.applied(p, s, agg.vector, 1.0, 0.0, agg, rnd)
        w, memory = with_feedback(agg.vector, s.memory, "scaled_sign")
        return self.applied(p, s, w, 1.0, 0.0, agg, rnd, memory=memory)
