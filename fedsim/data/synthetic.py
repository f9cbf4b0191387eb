"""FedProx's Synthetic(alpha, beta) (Li et al., 2020): per-client softmax models and inputs.

Client k draws u_k ~ N(0, alpha), W_k ~ N(u_k, 1) (classes x dim), b_k ~ N(u_k, 1),
B_k ~ N(0, beta), v_k ~ N(B_k, 1) (dim), then x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2 and
y = argmax(W_k x + b_k) (softmax does not change the argmax). As in the paper's code, alpha and
beta are standard deviations, and sample counts are lognormal(4, 2) plus `min_samples`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.config import DataConfig


class SyntheticOptions(BaseModel, extra="forbid"):
    """Heterogeneity of models (alpha) and of inputs (beta), sizes, and sample-count range."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    min_samples: int = Field(50, ge=1)
    max_samples: int = Field(2000, ge=1)  # caps the lognormal's heavy tail

    @model_validator(mode="after")
    def _ordered_bounds(self) -> SyntheticOptions:
        if self.max_samples < self.min_samples:
            raise ValueError(
                f"max_samples={self.max_samples} is below min_samples={self.min_samples}"
            )
        return self


def _client(
    rng: np.random.Generator, o: SyntheticOptions, size: int, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One client's inputs and labels."""
    u = rng.normal(0.0, o.alpha)
    w = rng.normal(u, 1.0, (o.num_classes, o.dim))
    b = rng.normal(u, 1.0, o.num_classes)
    v = rng.normal(rng.normal(0.0, o.beta), 1.0, o.dim)
    x = v + rng.standard_normal((size, o.dim)) * sigma
    return x.astype(np.float32), np.argmax(x @ w.T + b, axis=1).astype(np.int64)


def load(options: SyntheticOptions, cfg: DataConfig, seed: int) -> Dataset:
    """Generate each client, moving `test_fraction` of its samples into the pooled test split."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, cfg.num_clients).astype(np.int64) + options.min_samples
    sizes = np.minimum(sizes, options.max_samples)
    sigma = np.arange(1, options.dim + 1) ** -0.6  # standard deviations: sqrt(j^-1.2)
    train, test = [], []
    for size in sizes:
        x, y = _client(rng, options, int(size), sigma)
        cut = int(cfg.test_fraction * size)  # < size, so no client's train part is empty
        test.append((x[:cut], y[:cut]))
        train.append((x[cut:], y[cut:]))
    x_train, y_train = (np.concatenate(part) for part in zip(*train, strict=True))
    x_test, y_test = (np.concatenate(part) for part in zip(*test, strict=True))
    bounds = np.cumsum([0, *(len(y) for _, y in train)])
    splits = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return Dataset(x_train, y_train, x_test, y_test, options.num_classes, splits)


DATASETS.register(
    "synthetic",
    DatasetSpec(SyntheticOptions, load, natural=True),
    "FedProx Synthetic(alpha, beta): per-client softmax models over shifted Gaussian inputs",
)
