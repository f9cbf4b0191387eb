"""Local SGD with scaling (Chezhegov et al., 2024), client half (ALGORITHMS.md section 2).

Local steps x <- x - gamma * step / D_hat with D_hat held fixed within the round (sent by
the server); step is the gradient, or for Adam a first moment reset at every sync. The
client also sends a fresh statistic s taken at the round's start point: g * g (Adam,
RMSProp) or z * (H z) with a Rademacher z (OASIS). The "local" ablation instead updates
the client's own D every step from its own g * g (kept in Context.state).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.algorithms import CLIENT_HALVES
from fedsim.codecs import pack, unpack
from fedsim.servers.scaled_sgd import PRECONDITIONER, STATISTIC

from .local_sgd import compressed
from .training import ClientJob, ClientUpdate, steps_for

LOCAL_V = "scaled-local-v"


def statistic(job: ClientJob) -> torch.Tensor:
    """s at the round's start point, on one minibatch (full batch when batch_size is 0)."""
    f, p = job.objective, job.params
    (idx,) = f.batches(p.batch_size, 1, job.rng)
    if p.preconditioner == "oasis":
        z = torch.randint(0, 2, job.x.shape, generator=job.rng).to(job.x) * 2 - 1
        return z * f.hessian_vector(idx, z)
    _, g = f.loss_grad(idx)
    return g * g


def scaled_local_sgd(job: ClientJob) -> ClientUpdate:
    f, p = job.objective, job.params
    f.bind(job.x)
    plain = p.preconditioner == "none"  # the baseline: D_hat = 1, nothing extra sent
    s = None if plain else statistic(job)
    d = (
        torch.ones_like(job.x)
        if plain
        else torch.from_numpy(np.array(unpack(job.inbox[PRECONDITIONER])))
    )
    d = d.to(job.x.device)
    if p.variant == "local":
        saved = job.state.get(LOCAL_V)
        v = (
            torch.zeros_like(job.x)
            if saved is None
            else torch.from_numpy(np.array(unpack(saved["v"])))
        )
    m = torch.zeros_like(job.x)
    steps = steps_for(p, f.n)
    total, work = 0.0, 0
    for idx in f.batches(p.batch_size, steps, job.rng):
        work += f.n if idx is None else len(idx)
        if plain:  # exactly Local SGD's step
            total += f.sgd_step(idx, p.client_lr)
            continue
        loss, g = f.loss_grad(idx)
        total += loss
        if p.variant == "local":
            v.mul_(p.beta).add_(g * g, alpha=1 - p.beta)
            d = v.sqrt().clamp_(min=p.alpha)
        if p.preconditioner == "adam":
            m.mul_(p.beta1).add_(g, alpha=1 - p.beta1)
            g = m
        job.x.addcdiv_(g, d, value=-p.client_lr)
    if p.variant == "local":
        job.state[LOCAL_V] = ArrayRecord({"v": pack(v.cpu().numpy())})
    delta = job.received - job.x.cpu().numpy()
    extra = {} if s is None else {STATISTIC: s.cpu().numpy()}
    delta = compressed(job, delta)
    evals = steps + int(s is not None)
    return ClientUpdate(delta, total / max(steps, 1), evals, work, p.uplink, extra)


CLIENT_HALVES.register("scaled_sgd", scaled_local_sgd, "Local SGD with Adam/RMSProp/OASIS scaling")
