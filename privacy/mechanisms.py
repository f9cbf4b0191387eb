"""The mechanisms' numerics: clipping, Gaussian noise, and Opacus's private gradients."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

# Opacus is imported where a private run first needs it: importing it costs ~1.5 s, paid by
# every process that starts (each Ray worker, each deployed ClientApp), private or not.


def clip(v: np.ndarray, c: float) -> np.ndarray:
    """v scaled to l2 norm at most c."""
    norm = float(np.linalg.norm(v))
    return v if norm <= c else (v * np.float32(c / norm)).astype(np.float32)


def gaussian(v: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """v + N(0, std^2 I) in float32."""
    if std == 0:
        return v
    return (v + rng.normal(0.0, std, v.shape)).astype(np.float32)


def poisson_batches(n: int, q: float, steps: int, gen: torch.Generator):
    """Opacus's Poisson sampler: each example joins each batch independently with rate q."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(
        num_samples=n, sample_rate=q, generator=gen, steps=steps
    )
    for idx in sampler:
        yield torch.as_tensor(idx, dtype=torch.long)


class PrivateGradients:
    """DP-SGD's gradient through Opacus with ghost clipping: a first backward pass gives every
    example's gradient norm without materialising per-example gradients
    (GradSampleModuleFastGradientClipping), a second one the sum of the clipped gradients;
    DPOptimizerFastGradientClipping adds N(0, sigma^2 C^2) and divides by the expected
    batch size. Equal to clipping each example's gradient explicitly (tested)."""

    def __init__(self, model: nn.Module, sigma: float, c: float) -> None:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping

        self.module = GradSampleModuleFastGradientClipping(
            model, loss_reduction="mean", max_grad_norm=c, use_ghost_clipping=True
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = DPOptimizerFastGradientClipping(
            torch.optim.SGD(self.params, lr=0.0),
            noise_multiplier=sigma,
            max_grad_norm=c,
            expected_batch_size=1,  # set per call: q n_i
            loss_reduction="mean",
        )

    def __call__(
        self, loss_of, xb: torch.Tensor, yb: torch.Tensor, expected: float, gen: torch.Generator
    ):
        """(data loss, per-parameter private gradients) on the Poisson batch (xb, yb) whose
        expected size is `expected`; `loss_of(out, y, reduction)`."""
        self.optimizer.generator = gen
        self.optimizer.expected_batch_size = expected
        self.optimizer.zero_grad(set_to_none=True)
        value = 0.0
        if len(yb):
            per_example = loss_of(self.module(xb), yb, reduction="none")
            value = float(per_example.detach().mean())
            with warnings.catch_warnings():  # inputs never require grad: the hooks know
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                per_example.mean().backward(retain_graph=True)  # hooks: per-example norms
                self.optimizer.zero_grad(set_to_none=True)
                coef = self.module.get_clipping_coef()
                self.module.disable_hooks()
                (coef * per_example).sum().backward()  # sum_i clip(g_i)
                self.module.enable_hooks()
        for p in self.params:  # an empty Poisson batch: the step is noise alone
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.optimizer.pre_step()  # add noise, divide by the expected batch size
        return value, tuple(p.grad for p in self.params)
