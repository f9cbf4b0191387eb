"""Linear regression data of each partition (seeded by partition id) and local gradient steps;
every `outlier-every`-th partition has corrupted labels, which the trimmed mean drops."""

from __future__ import annotations

import numpy as np

DIM = 8


def load_data(partition_id: int, samples: int, seed: int, outlier_every: int):
    """(x, y) of one partition: y = x w* + noise, negated and scaled on outlier partitions."""
    w_star = np.random.default_rng(seed).standard_normal(DIM)
    rng = np.random.default_rng([seed, partition_id])
    x = rng.standard_normal((samples, DIM))
    y = x @ w_star + 0.1 * rng.standard_normal(samples)
    if outlier_every and partition_id % outlier_every == outlier_every - 1:
        y = -3.0 * y
    return x, y


def local_steps(w: np.ndarray, b: np.ndarray, x, y, steps: int, lr: float):
    """Full-batch gradient descent on the mean squared error; returns (w, b, final mse)."""
    for _ in range(steps):
        err = x @ w + b - y
        w = w - lr * 2.0 * (x.T @ err) / len(y)
        b = b - lr * 2.0 * np.array([err.mean()])
    return w, b, mse(w, b, x, y)


def mse(w: np.ndarray, b: np.ndarray, x, y) -> float:
    return float(np.mean((x @ w + b - y) ** 2))
