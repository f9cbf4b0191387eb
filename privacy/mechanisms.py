"""The mechanisms' numerics: clipping, Gaussian noise, Poisson batches (DP-SGD's private
gradients are in clipping.py)."""

from __future__ import annotations

import numpy as np
import torch


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
    """Poisson batches: each example joins each batch independently with rate q. The same
    draws as Opacus's UniformWithReplacementSampler (one torch.rand(n) per batch, compared
    with q; tests hold the two equal), without its round trip through a Python list."""
    for _ in range(steps):
        yield (torch.rand(n, generator=gen) < q).nonzero().view(-1)
