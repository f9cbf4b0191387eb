"""Local SGD with scaling (Chezhegov et al., 2024; docs/algorithms.md section 2).

Local steps x_i <- x_i - gamma step / D_hat with D_hat held fixed between synchronizations
(sent with the model); step is the gradient, or for Adam a first moment reset at every sync.
Each client also sends a statistic s_i taken at the round's start point: g * g (Adam,
RMSProp) or z * (H z) with a Rademacher z (OASIS). The server applies Local SGD's step, then
v <- beta v + (1 - beta) mean_i s_i (v starts at the first mean) and D_hat = max(alpha,
sqrt(v)) (Adam, RMSProp) or max(alpha, |v|) (OASIS). `none` keeps D_hat = 1 and sends nothing
extra: plain Local SGD. The `local` ablation updates each client's own D every step from its
own g * g instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedsim.method import Downlink, Upload, register_method

from .fedavg import LocalSGD, LocalSGDParams, compressed, local_steps, sgd

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.
if TYPE_CHECKING:
    from torch import Tensor

STATISTIC, PRECONDITIONER = "stat", "dhat"  # side arrays: s_i up, D_hat down


class ScaledParams(LocalSGDParams):
    preconditioner: Literal["none", "adam", "rmsprop", "oasis"] = Field(
        "rmsprop",
        description="D_hat from g * g (adam, rmsprop; adam also keeps a first moment), from"
        " z * (H z) (oasis), or none: plain Local SGD",
    )
    variant: Literal["global", "local"] = Field("global", description="local: ablation")
    beta: float = Field(0.999, ge=0, lt=1, description="statistic's moving average")
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam's first moment (reset each sync)")
    alpha: float = Field(1e-8, gt=0, description="lower bound on D_hat")


def precondition(v: Tensor, kind: str, alpha: float) -> Tensor:
    """D_hat from the averaged statistic."""
    import torch

    return torch.clamp(v.abs() if kind == "oasis" else v.clamp(min=0).sqrt(), min=alpha)


def statistic(p: ScaledParams, f, x: Tensor, rngs) -> Tensor:
    """s at the round's start point, on one minibatch (full batch when batch_size is 0)."""
    import torch

    (batch,) = f.batches(p.batch_size, 1, rngs)
    if p.preconditioner == "oasis":
        z = torch.stack([torch.randint(0, 2, x.shape[1:], generator=g) for g in rngs])
        z = z.to(x) * 2 - 1
        return z * f.hessian_vector(batch, z)
    _, g = f.loss_grad(batch)
    return g * g


@dataclass(frozen=True)
class ServerState:
    x: Tensor
    v: Tensor | None = None  # float64: the statistic's moving average
    d: Tensor | None = None  # D_hat (None: all ones)


@dataclass(frozen=True)
class ClientState:
    v: Tensor | None = None  # the `local` ablation's own statistic
    e: Tensor | None = None  # the error-feedback memory


@register_method
class ScaledLocalSGD(LocalSGD):
    name = "scaled_sgd"
    doc = "Local SGD with scaling: Adam/RMSProp/OASIS preconditioner fixed between syncs"
    params = ScaledParams
    client_state = ClientState

    def server_init(self, p, x0, num_clients, seed):
        return ServerState(x0)

    def broadcast(self, p, s, rnd):
        import torch

        s, down = super().broadcast(p, s, rnd)
        if p.preconditioner == "none":
            return s, down
        d = torch.ones_like(s.x) if s.d is None else s.d
        return s, Downlink(down.vector, down.codec, extra={PRECONDITIONER: d})

    def client_init(self, p, down):
        import torch

        local = p.variant == "local" and p.preconditioner != "none"
        v = torch.zeros_like(down.vector) if local else None
        e = torch.zeros_like(down.vector) if p.error_feedback else None
        return None if v is None and e is None else ClientState(v, e)

    def client_round(self, p, down, c, f, rngs):
        import torch

        x, x0 = down.vector, down.vector.clone()
        e = None if c is None else c.e
        if p.preconditioner == "none":  # exactly Local SGD's steps
            loss, steps, work = sgd(f, x, p, rngs)
            sent, e = compressed(p, x0 - x, e)
            upload = Upload(sent, loss, steps, work, weight=f.n, codec=p.uplink)
            return upload, None if e is None else ClientState(e=e)
        f.bind(x)
        s = statistic(p, f, x, rngs)
        d = down.extra[PRECONDITIONER]
        v = None if c is None or c.v is None else c.v.clone()
        m = torch.zeros_like(x)
        steps = [local_steps(p, n) for n in f.sizes]
        total = work = torch.zeros(len(steps), dtype=torch.float64)
        for batch in f.batches(p.batch_size, steps, rngs):
            active = batch.active[:, None]
            work = work + f.work(batch)
            loss, g = f.loss_grad(batch)
            total = total + loss
            if v is not None:
                v = torch.where(active, v.mul(p.beta).add_(g * g, alpha=1 - p.beta), v)
                d = v.sqrt().clamp_(min=p.alpha)
            if p.preconditioner == "adam":
                m = torch.where(active, m.mul(p.beta1).add_(g, alpha=1 - p.beta1), m)
                g = m * active
            x.addcdiv_(g, d, value=-p.client_lr)
        sent, e = compressed(p, x0 - x, e)
        count = torch.tensor(steps, dtype=torch.float64)
        loss = total / count.clamp(min=1)
        upload = Upload(sent, loss, count + 1, work, f.n, p.uplink, {STATISTIC: s})
        return upload, None if v is None and e is None else ClientState(v=v, e=e)

    def server_step(self, p, s, agg, rnd):
        x = s.x - p.server_lr * agg.vector
        if STATISTIC not in agg.extra:
            return ServerState(x, s.v, s.d)
        stat = agg.extra[STATISTIC].double()
        v = stat if s.v is None else p.beta * s.v + (1 - p.beta) * stat
        return ServerState(x, v, precondition(v, p.preconditioner, p.alpha).float())

    def check(self, scenario):
        mechanism, kind = scenario.privacy.mechanism, scenario.algorithm.preconditioner
        if mechanism == "dp_sgd" and kind == "oasis":
            raise ValueError("privacy.mechanism: 'dp_sgd' does not cover OASIS's Hessian products")
        if mechanism in ("dp_fedavg", "local") and kind != "none":
            raise ValueError(
                f"privacy.mechanism: {mechanism!r} protects the model delta, not the statistic"
                f" that algorithm.preconditioner {kind!r} sends too (use 'dp_sgd')"
            )

    def planned_grad_evals(self, p, n, rounds, seed):
        statistic = p.preconditioner != "none"  # one more gradient a round
        return rounds * (local_steps(p, n) + statistic)
