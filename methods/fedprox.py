"""FedProx (Li et al., MLSys 2020; docs/algorithms.md section 9): local SGD on the proximal
objective f_i(w) + (mu/2) ||w - x||^2, i.e. every local step is

    w <- w - gamma (g_i(w) + mu (w - x))

from the round's model x; the server aggregates as FedAvg. mu = 0 is FedAvg exactly.
"""

from __future__ import annotations

from pydantic import Field

from fedsim.method import Upload, register_method

from .fedavg import ClientState, FedAvg, FedAvgParams, compressed, local_steps

# torch is imported by the steps that compute: registering the method and validating a
# scenario (`fedsim run` refusing bad input at once) load none.


class FedProxParams(FedAvgParams):
    mu: float = Field(0.01, ge=0, description="weight of the proximal term (0: FedAvg)")


@register_method
class FedProx(FedAvg):
    name = "fedprox"
    doc = "FedProx: FedAvg's local steps on f_i + (mu/2)||w - x||^2"
    params = FedProxParams

    def client_round(self, p, down, c, f, rngs):
        import torch

        w, x = down.vector, down.vector.clone()
        f.bind(w)
        steps = [local_steps(p, n) for n in f.sizes]
        total = work = torch.zeros(len(steps), dtype=torch.float64)
        for batch in f.batches(p.batch_size, steps, rngs):
            pull = (w - x).mul_(p.client_lr * p.mu)  # the proximal gradient, taken at w
            total = total + f.sgd_step(batch, p.client_lr)
            w.sub_(pull * batch.active[:, None])
            work = work + f.work(batch)
        sent, e = compressed(p, x - w, None if c is None else c.e)
        count = torch.tensor(steps, dtype=torch.float64)
        upload = Upload(sent, total / count.clamp(min=1), count, work, f.n, p.uplink)
        return upload, None if e is None else ClientState(e)
