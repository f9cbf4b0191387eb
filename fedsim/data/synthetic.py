"""FedProx's Synthetic(alpha, beta) (Li et al., 2020): per-client softmax models and inputs.

Client k draws u_k ~ N(0, alpha), W_k ~ N(u_k, 1) (classes x dim), b_k ~ N(u_k, 1),
B_k ~ N(0, beta), v_k ~ N(B_k, 1) (dim), then x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2 and
y = argmax(W_k x + b_k) (softmax does not change the argmax). As in the paper's code, alpha and
beta are standard deviations, and sample counts are lognormal(4, 2) plus `min_samples`.
Each client is generated on demand from (seed, k), so 10,000 clients cost memory only for
those sampled; the server's test split pools the held-out part of the first `test_clients`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.config import DataConfig
from fedsim.seeding import derive_seed


class SyntheticOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """Heterogeneity of models (alpha) and of inputs (beta), sizes, and sample-count range."""

    alpha: float = Field(1.0, ge=0, description="std of u_k: how much the clients' models differ")
    beta: float = Field(1.0, ge=0, description="std of B_k: how much the clients' inputs differ")
    dim: int = Field(60, ge=1, description="input features")
    num_classes: int = Field(10, ge=2, description="classes")
    min_samples: int = Field(
        50, ge=1, description="added to a client's lognormal(4, 2) example count"
    )
    max_samples: int = Field(
        2000, ge=1, description="caps a client's example count (the lognormal's heavy tail)"
    )
    test_clients: int = Field(
        100, ge=1, description="clients whose held-out parts form the server's test split"
    )

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
    u = rng.normal(0.0, o.alpha)  # a Python float: adding it keeps float32
    w = u + rng.standard_normal((o.num_classes, o.dim), dtype=np.float32)
    b = u + rng.standard_normal(o.num_classes, dtype=np.float32)
    v = rng.normal(rng.normal(0.0, o.beta), 1.0, o.dim).astype(np.float32)
    x = rng.standard_normal((size, o.dim), dtype=np.float32)
    x *= sigma
    x += v
    return x, np.argmax(x @ w.T + b, axis=1)


def load(options: SyntheticOptions, cfg: DataConfig, seed: int) -> Dataset:
    """Clients made on demand; `test_fraction` of each client's samples is held out."""
    sigma = (np.arange(1, options.dim + 1) ** -0.6).astype(np.float32)  # sqrt(j^-1.2)

    def split(k: int) -> tuple[np.ndarray, np.ndarray, int]:
        rng = np.random.default_rng(derive_seed(seed, k))
        size = min(int(rng.lognormal(4, 2)) + options.min_samples, options.max_samples)
        x, y = _client(rng, options, size, sigma)
        return x, y, int(cfg.test_fraction * size)  # cut < size: no empty training part

    def client(k: int) -> tuple[np.ndarray, np.ndarray]:
        x, y, cut = split(k)
        return x[cut:], y[cut:]

    held_out = [split(k) for k in range(min(cfg.num_clients, options.test_clients))]
    x_test = np.concatenate([x[:cut] for x, _, cut in held_out])
    y_test = np.concatenate([y[:cut] for _, y, cut in held_out])
    empty_x, empty_y = np.empty((0, options.dim), np.float32), np.empty(0, np.int64)
    return Dataset(empty_x, empty_y, x_test, y_test, options.num_classes, client=client)


DATASETS.register(
    "synthetic",
    DatasetSpec(SyntheticOptions, load, natural=True),
    "FedProx Synthetic(alpha, beta): per-client softmax models over shifted Gaussian inputs",
)
