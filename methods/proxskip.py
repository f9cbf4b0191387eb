"""ProxSkip / Scaffnew, GradSkip and GradSkip+ (docs/algorithms.md sections 3 and 4).

A round is K ~ Geometric(p) local iterations (drawn from the round seed, the same for every
client), the last one ending in the communication. Client i keeps h_hat_i and x_hat_i of its
last round; when the average z of that round arrives it takes x_i = z (on the communicated
coordinates S; x_hat_i elsewhere) and h_i = h_hat_i + (x_i - x_hat_i) / tau. Each iteration
it draws C_Omega_i = Bernoulli(q_i) times rand-k_i (scaled to be unbiased) and steps

    h_hat_i = grad f_i(x_i) - eta_i M_i (grad f_i(x_i) - h_i)
    x_hat_i = x_i - gamma (grad f_i(x_i) - h_hat_i)

On eta_i = 0 (GradSkip) nothing moves and h_hat_i = grad f_i(x_i): no further gradient this
round. A communication sends x_hat_i - tau h_hat_i on S, tau = gamma (1 + omega) =
gamma d / (p k); the server takes prox_{tau R} of the plain mean. q = 1, k = d and R = 0 is
ProxSkip. Every client takes part in every round: a round with a missing reply is void (the
model stays, and each client's state stays that of the last applied round, so
sum_i h_i = 0 holds exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import Field, field_validator

from fedsim.method import (
    Aggregate,
    Downlink,
    FederatedMethod,
    Params,
    Received,
    Supports,
    Upload,
    register_method,
)
from fedsim.problems import client_constants
from fedsim.seeding import derive_seed, shared_coordinates

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.
if TYPE_CHECKING:
    import torch
    from torch import Tensor

COIN_STREAM, COORDINATE_STREAM = 31, 32


class ProxSkipParams(Params):
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
    comm_density: float = Field(
        1.0, gt=0, le=1, description="GradSkip+: fraction of coordinates a communication averages"
    )
    skip_density: float = Field(
        1.0, gt=0, le=1, description="GradSkip+: fraction of coordinates a local step moves"
    )
    regularizer: Literal["none", "l1", "l2"] = Field("none", description="R in the prox")
    reg: float = Field(0.0, ge=0, description="lambda: R = lambda ||x||_1 or (lambda/2)||x||^2")

    @field_validator("q")
    @classmethod
    def _probabilities(cls, v: float | list[float] | str) -> float | list[float] | str:
        if v == "theory":
            return v
        if any(not 0 < x <= 1 for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"{v} must lie in (0, 1]")
        return v


def consensus_step(p: ProxSkipParams, d: int) -> float:
    """tau = gamma (1 + omega) = gamma d / (p k): the prox step of a communication."""
    k = max(1, round(p.comm_density * d))
    return p.client_lr * d / (p.p * k)


def communicated(p: ProxSkipParams, d: int, seed: int, rnd: int) -> np.ndarray | None:
    """The coordinates a round's communication averages (None: all)."""
    return shared_coordinates(p.comm_density, d, seed, rnd, COORDINATE_STREAM)


def round_length(p: float, seed: int, rnd: int) -> int:
    """K ~ Geometric(p) on {1, 2, ...}: iterations until the shared coin says communicate."""
    return int(np.random.default_rng(derive_seed(seed, rnd, COIN_STREAM)).geometric(p))


def prox(kind: str, v: Tensor, t: float) -> Tensor:
    """prox_{tR}(v) for R = 0, ||.||_1 (soft thresholding) or (1/2)||.||^2 (shrinking)."""
    import torch

    if kind == "l1":
        return torch.sign(v) * torch.clamp(v.abs() - t, min=0)
    return v / (1 + t) if kind == "l2" else v


def skip_operator(gen: torch.Generator, q: float, d: int, k: int) -> tuple[bool, Tensor | None]:
    """One draw of C_Omega_i: eta_i ~ Bernoulli(q) and M_i, k coordinates (None: all d)."""
    import torch

    if q < 1.0 and torch.rand((), generator=gen).item() >= q:
        return False, None
    return True, (torch.randperm(d, generator=gen)[:k] if k < d else None)


@dataclass(frozen=True)
class ClientState:
    h_hat: Tensor  # h_hat_i of the client's last applied round (0 before any)
    x_hat: Tensor  # x_hat_i it sent in that round (the model before any)
    round: int


@dataclass(frozen=True)
class ServerState:
    x: Tensor
    num_clients: int
    seed: int


def start_of_round(p: ProxSkipParams, down: Received, c: ClientState) -> Tensor:
    """Set down.vector to each x_i and return each h_i ([C, d]). c is from the last applied
    round, whose average is down.vector (every client takes part in every applied round)."""
    import torch

    d = down.vector.shape[1]
    if p.comm_density < 1:  # only S was averaged: the rest of x_i is the client's own
        mine = c.x_hat.clone()
        for r in c.round.unique().tolist():
            rows = (c.round == r).nonzero()
            idx = torch.from_numpy(communicated(p, d, down.seed, r))
            mine[rows, idx] = down.vector[rows, idx]
        down.vector.copy_(mine)
    return c.h_hat.clone().add_(down.vector - c.x_hat, alpha=1.0 / consensus_step(p, d))


THEORY = {"client_lr": "1/L", "p": "1/sqrt(kappa)", "q": "theory"}


@register_method
class ProxSkip(FederatedMethod[ProxSkipParams, ClientState, ServerState]):
    name = "proxskip"
    doc = "ProxSkip / Scaffnew: K ~ Geom(p) local steps, control variates"
    params = ProxSkipParams
    client_state = ClientState
    # the control variates sum to zero only if every client takes part in every average
    supports = Supports(
        partial=False, overcommit=False, deadline=False, privacy=frozenset({"dp_sgd"})
    )

    def server_init(self, p, x0, num_clients, seed):
        return ServerState(x0, num_clients, seed)

    def broadcast(self, p, s, rnd):
        q = p.q if isinstance(p.q, list) else [p.q] * s.num_clients
        return s, Downlink(s.x, config={"local_steps": round_length(p.p, s.seed, rnd), "q": q})

    def client_init(self, p, down):
        """h = 0 and x_hat = x: h_hat + (x - x_hat) / tau is then exactly 0."""
        import torch

        rounds = torch.zeros(len(down.partitions), dtype=torch.long)
        return ClientState(torch.zeros_like(down.vector), down.vector.clone(), rounds)

    def client_round(self, p, down, c, f, rngs):
        import torch

        gamma, (n, d) = p.client_lr, down.vector.shape
        q = [float(down.config["q"][pid]) for pid in down.partitions]
        k = max(1, round(p.skip_density * d))
        x0 = down.vector.clone()  # the server's model: what the delta is taken from
        h = start_of_round(p, down, c)
        x = down.vector
        f.bind(x)
        total = computed = work = torch.zeros(n, dtype=torch.float64)
        frozen = torch.zeros(n, dtype=torch.bool)
        for batch in f.batches(p.batch_size, int(down.config["local_steps"]), rngs):
            batch = batch.only(~frozen)  # frozen: x_hat = x, h_hat = grad f_i(x), no compute
            if not any(batch.flags):
                continue
            loss, g = f.loss_grad(batch)
            active = batch.flags
            total, computed, work = (
                total + loss,
                computed + torch.tensor(active),
                work + f.work(batch),
            )
            draws = [skip_operator(rngs[i], q[i], d, k) if active[i] else None for i in range(n)]
            stop = torch.tensor([o is not None and not o[0] for o in draws])
            frozen |= stop
            stop = stop.to(x.device)
            h = torch.where(stop[:, None], g, h)  # eta_i = 0: h_hat = grad, stop computing
            moving = batch.active & ~stop
            if k == d:  # x_hat = x - gamma (grad - h)
                x.add_((g - h) * moving[:, None], alpha=-gamma)
                continue
            mask = torch.zeros(n, d, dtype=torch.bool, device=x.device)
            for i in moving.nonzero().flatten().tolist():
                mask[i, draws[i][1].to(x.device)] = True
            x.sub_(gamma * (g - h) * mask)  # only M_i moves
            h = torch.where(mask | ~moving[:, None], h, g)  # h_hat: h_i on M_i, grad elsewhere
        state = ClientState(h.clone(), x.clone(), torch.full((n,), down.round))
        delta = x0 - (x - consensus_step(p, d) * h)  # the server averages x_hat - tau h_hat
        idx = communicated(p, d, down.seed, down.round)
        delta = delta if idx is None else delta[:, idx]
        return Upload(delta, total / computed.clamp(min=1), computed, work), state

    def server_step(self, p, s, agg: Aggregate, rnd):
        """x <- prox_{tau R}(mean_i (x_hat_i - tau h_hat_i)) on the communicated coordinates;
        void unless every client's reply was averaged."""
        if len(agg.used) < s.num_clients:
            return None
        idx = communicated(p, s.x.numel(), s.seed, rnd)
        x = s.x.clone()
        z = (x if idx is None else x[idx]) - agg.vector
        z = prox(p.regularizer, z, consensus_step(p, x.numel()) * p.reg)
        if idx is None:
            return ServerState(z, s.num_clients, s.seed)
        x[idx] = z
        return ServerState(x, s.num_clients, s.seed)

    def planned_grad_evals(self, p, n, rounds, seed):
        return sum(round_length(p.p, seed, r) for r in range(1, rounds + 1))

    def check(self, scenario):
        q, n = scenario.algorithm.q, scenario.data.num_clients
        if isinstance(q, list) and len(q) != n:
            raise ValueError(f"algorithm.q: {q} needs one value per client ({n}), not {len(q)}")

    def resolve(self, scenario):
        """The theory's gamma = 1/L_max, p = 1/sqrt(kappa_max) and GradSkip's
        q_i = (1 - 1/kappa_i) / (1 - 1/kappa_max), wherever the scenario asks for them."""
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


@register_method
class GradSkip(ProxSkip):
    name = "gradskip"
    doc = "GradSkip: ProxSkip where client i stops computing w.p. 1 - q_i"


@register_method
class GradSkipPlus(ProxSkip):
    name = "gradskip_plus"
    doc = "GradSkip+: rand-k compression operators for both coins, general prox"
