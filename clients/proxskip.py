"""ProxSkip / Scaffnew, GradSkip and GradSkip+, client half (ALGORITHMS.md sections 3, 4).

A round is K local iterations (K ~ Geometric(p), drawn by the server from the round
seed, the same for every client); the last one ends in the server's average. Client
i keeps its control variate h_i and its last x_hat_i in Context.state.

Each iteration client i draws its operator C_Omega_i = Bernoulli(q_i) times rand-k_i
(scaled to be unbiased, so (I + Omega_i)^-1 C_Omega_i(v) = eta_i M_i v) and steps

    h_hat_i = grad f_i(x_i) - eta_i M_i (grad f_i(x_i) - h_i)
    x_hat_i = x_i - gamma (grad f_i(x_i) - h_hat_i)

On eta_i = 0 (GradSkip) nothing moves and h_hat_i = grad f_i(x_i), so the client computes
no further gradient this round. q_i = 1 and M_i = all coordinates is ProxSkip. The
communication sends x_hat_i - tau h_hat_i on its coordinates S; when the average z
arrives, x_i = z on S (x_hat_i elsewhere) and h_i = h_hat_i + (x_i - x_hat_i) / tau.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsim.algorithms import CLIENT_HALVES
from fedsim.codecs import pack, unpack
from fedsim.servers.proxskip import communicated, consensus_step

from .training import ClientJob, ClientUpdate

STATE, ROUND = "proxskip", "proxskip-round"


def skip_operator(gen: torch.Generator, q: float, d: int, k: int) -> tuple[bool, torch.Tensor]:
    """One draw of C_Omega_i: eta_i ~ Bernoulli(q) and M_i, k coordinates (None: all d)."""
    if q < 1.0 and torch.rand((), generator=gen).item() >= q:
        return False, None
    return True, (torch.randperm(d, generator=gen)[:k] if k < d else None)


def _saved(job: ClientJob, key: str) -> torch.Tensor:
    return torch.from_numpy(np.array(unpack(job.state[STATE][key]))).to(job.x.device)


def resume(job: ClientJob) -> torch.Tensor:
    """Set job.x to x_i and return h_i, applying the last communication if it used our x_hat_i.

    If our last round was void (see fedsim.servers.proxskip), x_hat_i is discarded: x_i and
    h_i stay as they were before it.
    """
    if STATE not in job.state:
        return torch.zeros_like(job.x)
    h = _saved(job, "h")
    last_round = int(job.state[ROUND]["round"])
    applied = int(job.config["last-applied"])
    averaged = last_round == applied and job.partition_id in job.config["aggregated"]
    d, seed = job.x.numel(), job.spec.seed
    if job.params.comm_density < 1:  # only S was averaged: the rest of x_i is our own
        mine = _saved(job, "x_hat" if averaged else "x_start")
        if averaged:
            idx = torch.from_numpy(communicated(job.params, d, seed, last_round))
            mine[idx] = job.x[idx]
        job.x.copy_(mine)
    if averaged:
        h.add_(job.x - _saved(job, "x_hat"), alpha=1.0 / consensus_step(job.params, d))
    return h


def proxskip(job: ClientJob) -> ClientUpdate:
    p, f = job.params, job.objective
    gamma, d = p.client_lr, job.x.numel()
    q = float(job.config["q"][job.partition_id])
    k = max(1, round(p.skip_density * d))
    h = resume(job)
    x_start = job.x.cpu().numpy().copy() if p.comm_density < 1 else None
    f.bind(job.x)
    iterations = int(job.config["local_steps"])
    total, computed, work, frozen = 0.0, 0, 0, False
    for idx in f.batches(p.batch_size, iterations, job.rng):
        if frozen:  # x_hat = x and h_hat = grad f_i(x): nothing moves, nothing to compute
            continue
        loss, g = f.loss_grad(idx)
        total, computed = total + loss, computed + 1
        work += f.n if idx is None else len(idx)
        eta, mask = skip_operator(job.rng, q, d, k)
        if not eta:
            h, frozen = g, True
        elif mask is None:
            job.x.add_(g - h, alpha=-gamma)  # x_hat = x - gamma (grad - h)
        else:
            job.x[mask] -= gamma * (g[mask] - h[mask])
            g[mask] = h[mask]  # h_hat: h_i on M_i, the fresh gradient elsewhere
            h = g
    x_hat, h_np = job.x.cpu().numpy().copy(), h.cpu().numpy()
    saved = {"h": pack(h_np), "x_hat": pack(x_hat)}
    if x_start is not None:
        saved["x_start"] = pack(x_start)
    job.state[STATE] = ArrayRecord(saved)
    job.state[ROUND] = ConfigRecord({"round": job.round})
    sent = x_hat - consensus_step(p, d) * h_np  # the server averages these
    delta = job.received - sent
    idx = communicated(p, d, job.spec.seed, job.round)
    delta = delta if idx is None else delta[idx]
    return ClientUpdate(delta, total / max(computed, 1), computed, work)


for _name, _doc in (
    ("proxskip", "ProxSkip / Scaffnew: K ~ Geom(p) local steps"),
    ("gradskip", "GradSkip: ProxSkip with per-client skip coins"),
    ("gradskip_plus", "GradSkip+: rand-k skip and communication operators, general prox"),
):
    CLIENT_HALVES.register(_name, proxskip, _doc)
