"""Two server optimizers on top of FedAvg's clients: FedAvgM (Hsu et al., 2019) and FedAdam
(Reddi et al., ICLR 2021). `agg.vector` is the weighted mean of the clients' x - x_i (the
negative of their progress), so a server step subtracts."""

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

import fedsim
from fedsim.methods.fedavg import FedAvg, FedAvgParams


class FedAvgMParams(FedAvgParams):
    beta: float = Field(0.9, ge=0, lt=1, description="server momentum")


@dataclass(frozen=True)
class MomentumState:
    x: Tensor  # the model
    v: Tensor  # the server's momentum


@fedsim.register_method
class FedAvgM(FedAvg):
    """FedAvgM: FedAvg with server momentum, v <- beta v + mean(x - x_i), x <- x - eta_s v"""

    name = "fedavgm"
    params = FedAvgMParams

    def server_init(self, p, x0, num_clients, seed):
        return MomentumState(x0, torch.zeros_like(x0))

    def server_step(self, p, s, agg, rnd):
        v = p.beta * s.v + agg.vector
        return MomentumState(s.x - p.server_lr * v, v)


class FedAdamParams(FedAvgParams):
    server_lr: float = Field(0.01, gt=0, description="eta, the server's step size")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="adaptivity: v starts at tau^2")


@dataclass(frozen=True)
class AdamState:
    x: Tensor
    m: Tensor  # first moment of the server's pseudo-gradient
    v: Tensor  # second moment


def adam_step(s: AdamState, g: Tensor, p: FedAdamParams) -> AdamState:
    """Reddi et al.'s Algorithm 2 on the pseudo-gradient g = mean(x - x_i)."""
    m = p.beta1 * s.m + (1 - p.beta1) * g
    v = p.beta2 * s.v + (1 - p.beta2) * g * g
    return AdamState(s.x - p.server_lr * m / (v.sqrt() + p.tau), m, v)


@fedsim.register_method
class FedAdam(FedAvg):
    """FedAdam: FedAvg's clients, Adam on the server (Reddi et al., ICLR 2021)"""

    name = "fedadam"
    params = FedAdamParams

    def server_init(self, p, x0, num_clients, seed):
        return AdamState(x0, torch.zeros_like(x0), torch.full_like(x0, p.tau**2))

    def server_step(self, p, s, agg, rnd):
        return adam_step(s, agg.vector, p)
