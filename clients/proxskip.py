"""ProxSkip / Scaffnew and GradSkip, client half (ALGORITHMS.md sections 3 and 4).

A round is K local iterations (K ~ Geometric(p), drawn by the server from the round
seed, the same for every client); the last one ends in the server's average. Client
i keeps its control variate h_i and its last x_hat_i in Context.state. GradSkip
adds a coin eta_i ~ Bernoulli(q_i) per iteration: on eta_i = 0 the client sets
h_hat_i = grad f_i(x_i), stops moving (x_hat_i = x_i) and computes no further
gradient this round. q_i = 1 is ProxSkip.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsim.algorithms import CLIENT_HALVES
from fedsim.codecs import CODECS, pack, unpack

from .training import ClientJob, ClientUpdate, minibatches

STATE, ROUND = "proxskip", "proxskip-round"


def control_variate(job: ClientJob) -> torch.Tensor:
    """h_i, updated by (p/gamma)(x - x_hat_i) if the average just received used our x_hat_i.

    Otherwise (our round was void, see fedsim.servers.proxskip) x_hat_i is discarded and
    h_i stays as it was.
    """
    saved = job.state.get(STATE)
    if saved is None:
        return torch.zeros_like(job.x)
    h = torch.from_numpy(np.array(unpack(saved["h"]))).to(job.x.device)
    last_round = int(job.state[ROUND]["round"])
    applied = int(job.config["last-applied"])
    averaged = last_round == applied and job.partition_id in job.config["aggregated"]
    if averaged:
        x_hat = torch.from_numpy(np.array(unpack(saved["x_hat"]))).to(job.x.device)
        h.add_(job.x - x_hat, alpha=job.params.p / job.params.client_lr)
    return h


def proxskip(job: ClientJob) -> ClientUpdate:
    p, f = job.params, job.objective
    gamma = p.client_lr
    q = float(job.config["q"][job.partition_id])
    h = control_variate(job)
    f.bind(job.x)
    iterations = int(job.config["local_steps"])
    total, computed, work, frozen = 0.0, 0, 0, False
    for idx in minibatches(f.n, p.batch_size, iterations, job.rng, job.x.device):
        if frozen:  # x_hat = x and h_hat = grad f_i(x): nothing moves, nothing to compute
            continue
        loss, g = f.loss_grad(idx)
        total, computed = total + loss, computed + 1
        work += f.n if idx is None else len(idx)
        if q < 1.0 and torch.rand((), generator=job.rng).item() >= q:
            h, frozen = g, True  # eta_i = 0
        else:
            job.x.add_(g - h, alpha=-gamma)  # x_hat = x - gamma (grad - h)
    x_hat = job.x.cpu().numpy().copy()
    h_np = h.cpu().numpy()
    job.state[STATE] = ArrayRecord({"h": pack(h_np), "x_hat": pack(x_hat)})
    job.state[ROUND] = ConfigRecord({"round": job.round})
    sent = x_hat - (gamma / p.p) * h_np  # the server averages these
    delta = job.received - sent
    return ClientUpdate(CODECS.get("fp32").encode(delta), total / max(computed, 1), computed, work)


CLIENT_HALVES.register("proxskip", proxskip, "ProxSkip / Scaffnew: K ~ Geom(p) local steps")
CLIENT_HALVES.register("gradskip", proxskip, "GradSkip: ProxSkip with per-client skip coins")
