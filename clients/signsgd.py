"""signSGD and Signum with majority vote, and EF-SignSGD, client half (ALGORITHMS.md section 5).

The client keeps the model (see fedsim.servers.signsgd): it is sent the model, or the last
round's step to apply to the model it holds. Then one stochastic gradient g: signSGD sends
sign(g), Signum sign(m) with m <- beta m + (1 - beta) g, EF-SignSGD the scaled sign of
p = gamma g + e, keeping e <- p - (||p||_1/d) sign(p).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsim.algorithms import CLIENT_HALVES
from fedsim.codecs import codec, pack, unpack
from fedsim.servers.signsgd import (
    STEP_CODEC,
    STEP_LR,
    STEP_ROUND,
    WEIGHT_DECAY,
    apply_step,
    scheduled,
)

from .training import ClientJob, ClientUpdate, error_feedback

HELD, HELD_ROUND, MOMENTUM = "held-model", "held-round", "signum-momentum"


def held_model(job: ClientJob) -> torch.Tensor:
    """This round's model, bound for training: as sent, or the held one stepped."""
    if job.received is None:
        c = job.config
        held = int(job.state[HELD_ROUND]["round"]) if HELD_ROUND in job.state else None
        if held != int(c[STEP_ROUND]):
            raise RuntimeError(
                f"partition {job.partition_id} holds the model of round {held}, "
                f"was sent the step of round {c[STEP_ROUND]}"
            )
        w = codec(str(c[STEP_CODEC])).decode(job.inbox)
        x = apply_step(unpack(job.state[HELD]["x"]), w, float(c[STEP_LR]), float(c[WEIGHT_DECAY]))
        job.x = job.objective.load(x)
    job.state[HELD] = ArrayRecord({"x": pack(job.x.cpu().numpy())})
    job.state[HELD_ROUND] = ConfigRecord({"round": job.round})
    job.objective.bind(job.x)
    return job.x


def stochastic_gradient(job: ClientJob) -> tuple[float, torch.Tensor, int]:
    """(loss, gradient, examples) on one minibatch at the held model."""
    f = job.objective
    held_model(job)
    (idx,) = f.batches(job.params.batch_size, 1, job.rng)
    loss, g = f.loss_grad(idx)
    return loss, g, f.n if idx is None else len(idx)


def sign_sgd(job: ClientJob) -> ClientUpdate:
    loss, g, work = stochastic_gradient(job)
    beta = job.params.momentum
    if beta:  # Signum: the momentum is what gets signed
        saved = job.state.get(MOMENTUM)
        m = torch.zeros_like(g) if saved is None else torch.from_numpy(unpack(saved["v"]).copy())
        g = m.to(g.device).mul_(beta).add_(g, alpha=1 - beta)
        job.state[MOMENTUM] = ArrayRecord({"v": pack(g.cpu().numpy())})
    return ClientUpdate(g.cpu().numpy(), loss, 1, work, codec="sign")


def ef_sign_sgd(job: ClientJob) -> ClientUpdate:
    loss, g, work = stochastic_gradient(job)
    gamma = scheduled(job.params.client_lr, job.params.schedule, job.round)
    sent = error_feedback(job.state, gamma * g.cpu().numpy(), "scaled_sign")
    return ClientUpdate(sent, loss, 1, work, codec="scaled_sign")


CLIENT_HALVES.register("signsgd_mv", sign_sgd, "signSGD: send sign(g)")
CLIENT_HALVES.register("signum_mv", sign_sgd, "Signum: send sign(momentum)")
CLIENT_HALVES.register("ef_signsgd", ef_sign_sgd, "EF-SignSGD: scaled sign with error memory")
