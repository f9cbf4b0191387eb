"""Deterministic seeds derived from keys such as (scenario seed, round, partition id)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported by the data and the system profiles, which need no torch
    import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key and on their order."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def torch_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from `keys` (CPU so results do not depend on the device)."""
    import torch

    return torch.Generator().manual_seed(derive_seed(*keys))


def shared_coordinates(fraction: float, d: int, *keys: int) -> np.ndarray | None:
    """k = max(1, round(fraction * d)) sorted coordinates drawn without replacement from `keys`,
    so every party holding the keys draws the same set; None means all d coordinates."""
    k = max(1, round(fraction * d))
    if k >= d:
        return None
    return np.sort(np.random.default_rng(derive_seed(*keys)).choice(d, k, replace=False))
