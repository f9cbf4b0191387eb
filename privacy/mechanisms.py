"""The mechanisms' numerics: clipping, Gaussian noise, Poisson batches (DP-SGD's private
gradients are in clipping.py)."""

from __future__ import annotations

import numpy as np
import torch

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
