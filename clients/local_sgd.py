"""Local SGD / FedAvg, client half: H plain SGD steps from x, send delta = x - x_H."""

from __future__ import annotations

import numpy as np

from fedsim.algorithms import CLIENT_HALVES

from .training import ClientJob, ClientUpdate, error_feedback, steps_for


def sgd_steps(job: ClientJob) -> tuple[float, int, int]:
    """Run the round's local SGD steps on job.x in place; return (mean loss, steps, examples)."""
    f, p = job.objective, job.params
    f.bind(job.x)
    steps = steps_for(p, f.n)
    total, work = 0.0, 0
    for idx in f.batches(p.batch_size, steps, job.rng):
        total += f.sgd_step(idx, p.client_lr)
        work += f.n if idx is None else len(idx)
    return total / max(steps, 1), steps, work


def compressed(job: ClientJob, delta: np.ndarray) -> np.ndarray:
    """The delta to send in the uplink format, through error feedback if asked for."""
    p = job.params
    return error_feedback(job.state, delta, p.uplink) if p.error_feedback else delta


def local_sgd(job: ClientJob) -> ClientUpdate:
    loss, steps, work = sgd_steps(job)
    x = job.x.cpu().numpy()  # the local iterate; ours to overwrite with the delta
    delta = np.subtract(job.received, x, out=x)
    return ClientUpdate(compressed(job, delta), loss, steps, work, codec=job.params.uplink)


CLIENT_HALVES.register("fedavg", local_sgd, "FedAvg: local SGD epochs, weighted average")
CLIENT_HALVES.register("local_sgd", local_sgd, "Local SGD: H local steps, server step size")
