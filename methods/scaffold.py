"""SCAFFOLD (Karimireddy et al., ICML 2020; docs/algorithms.md section 9).

Server state: the model x and a control variate c; client state: c_i (both start at zero).
A sampled client runs K steps y <- y - eta_l (g_i(y) - c_i + c) from y = x, then takes
c_i+ = grad f_i(x) (option I: one more full gradient) or c_i+ = c_i - c + (x - y)/(K eta_l)
(option II), sends delta = x - y and dc = c_i+ - c_i, and keeps c_i+. The server, with S
the clients whose updates it used and N all clients, applies x <- x - eta_g mean_S delta and
c <- c + (1/N) sum_S dc, so sum_i c_i = N c after every round, with any cohort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedsim.method import Downlink, FederatedMethod, Params, Supports, Upload, register_method

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.
if TYPE_CHECKING:
    from torch import Tensor

CONTROL, CONTROL_DELTA = "c", "dc"  # side arrays: c down, dc up


class ScaffoldParams(Params):
    local_steps: int = Field(10, ge=1, description="K local steps per round")
    batch_size: int = Field(32, ge=0, description="0: full-batch gradients")
    client_lr: float = Field(0.1, gt=0, description="eta_l")
    server_lr: float = Field(1.0, gt=0, description="eta_g")
    option: Literal["I", "II"] = Field("II", description="c_i+: I = grad f_i(x), II = cheap")


@dataclass(frozen=True)
class ServerState:
    x: Tensor
    c: Tensor
    num_clients: int


@dataclass(frozen=True)
class ClientState:
    c: Tensor  # c_i


@register_method
class Scaffold(FederatedMethod[ScaffoldParams, ClientState, ServerState]):
    name = "scaffold"
    doc = "SCAFFOLD: local steps corrected by control variates c - c_i"
    params = ScaffoldParams
    client_state = ClientState
    # DP-FedAvg and local noise would leave dc unprotected; option I's full gradient is not
    # a DP-SGD step (checked below)
    supports = Supports(privacy=frozenset({"dp_sgd"}))

    def server_init(self, p, x0, num_clients, seed):
        import torch

        return ServerState(x0, torch.zeros_like(x0), num_clients)

    def broadcast(self, p, s, rnd):
        return s, Downlink(s.x, extra={CONTROL: s.c})

    def client_init(self, p, down):
        import torch

        return ClientState(torch.zeros_like(down.vector))

    def client_round(self, p, down, c, f, rngs):
        import torch

        y, x, c_server = down.vector, down.vector.clone(), down.extra[CONTROL]
        correction = c_server - c.c
        f.bind(y)
        total = work = torch.zeros(len(rngs), dtype=torch.float64)
        for batch in f.batches(p.batch_size, p.local_steps, rngs):
            loss, g = f.loss_grad(batch)
            y.add_(g + correction, alpha=-p.client_lr)
            total, work = total + loss, work + f.work(batch)
        evals = torch.full_like(total, p.local_steps)
        if p.option == "I":
            f.bind(x.clone())
            _, c_new = f.loss_grad(f.all())
            evals, work = evals + 1, work + f.n
        else:
            c_new = c.c - c_server + (x - y) / (p.local_steps * p.client_lr)
        upload = Upload(
            x - y, total / p.local_steps, evals, work, extra={CONTROL_DELTA: c_new - c.c}
        )
        return upload, ClientState(c_new)

    def server_step(self, p, s, agg, rnd):
        x = s.x - p.server_lr * agg.vector
        c = s.c + (len(agg.used) / s.num_clients) * agg.extra[CONTROL_DELTA]
        return ServerState(x, c, s.num_clients)

    def planned_grad_evals(self, p, n, rounds, seed):
        return rounds * (p.local_steps + (p.option == "I"))

    def check(self, scenario):
        if scenario.privacy.mechanism == "dp_sgd" and scenario.algorithm.option == "I":
            raise ValueError(
                "algorithm.option: 'I' takes a full non-private gradient; privacy.mechanism"
                " 'dp_sgd' needs option 'II'"
            )
