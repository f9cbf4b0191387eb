"""FedProx (Li et al., MLSys 2020; docs/algorithms.md section 9): local SGD on the proximal
objective f_i(w) + (mu/2) ||w - x||^2, i.e. every local step is

    w <- w - gamma (g_i(w) + mu (w - x))

from the round's model x; the server aggregates as FedAvg. mu = 0 is FedAvg exactly.
"""

from __future__ import annotations

from pydantic import Field

from fedsim.method import Upload, register

from .fedavg import ClientState, FedAvg, FedAvgParams, compressed, local_steps


class FedProxParams(FedAvgParams):
    mu: float = Field(0.01, ge=0, description="weight of the proximal term (0: FedAvg)")


@register
class FedProx(FedAvg):
    name = "fedprox"
    doc = "FedProx: FedAvg's local steps on f_i + (mu/2)||w - x||^2"
    params = FedProxParams

    def client_round(self, p, down, c, f, rng):
        w, x = down.vector, down.vector.clone()
        f.bind(w)
        steps = local_steps(p, f.n)
        total, work = 0.0, 0
        for idx in f.batches(p.batch_size, steps, rng):
            pull = (w - x).mul_(p.client_lr * p.mu)  # the proximal gradient, taken at w
            total += f.sgd_step(idx, p.client_lr)
            w.sub_(pull)
            work += f.n if idx is None else len(idx)
        sent, e = compressed(p, x - w, None if c is None else c.e)
        upload = Upload(sent, total / max(steps, 1), steps, work, weight=f.n, codec=p.uplink)
        return upload, ClientState(e)
