"""Generated l2-regularised binary logistic regression with a chosen condition number per client.

Client i holds m rows a_j (Gaussian, shifted by a per-client mean) with labels b_j in {0, 1}
from a planted linear model plus label noise. Its loss is
f_i(x) = (1/m) sum_j log(1 + exp(-(2 b_j - 1) a_j^T x)) + (lambda_i / 2) ||x||^2 (no bias),
which is L_i-smooth and mu_i-strongly convex with L_i = lambda_max(A_i^T A_i) / (4 m) + lambda_i
and mu_i = lambda_i; lambda_i is chosen so that L_i / mu_i is exactly the requested kappa_i.
With `common_mu` every client has the same mu (that of the largest kappa) and client i's rows
are scaled so that L_i = kappa_i mu instead: the setting of GradSkip's theory, where a
well-conditioned client is a smooth one (meta then reports the realised kappa_i).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.config import DataConfig

Kappa = Annotated[float, Field(gt=1)]


class LogregOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """Problem size, per-client condition number(s), label noise and client heterogeneity."""

    dim: int = Field(20, ge=1, description="features d")
    samples_per_client: int = Field(100, ge=1, description="rows m per client")
    kappa: Kappa | list[Kappa] = Field(
        100.0, description="condition number L_i / mu_i: one for all clients, or one per client"
    )
    test_samples: int = Field(
        200, ge=1, description="test rows, from the pooled distribution (not data.test_fraction)"
    )
    label_noise: float = Field(0.1, ge=0, le=0.5, description="probability a label is flipped")
    heterogeneity: float = Field(
        0.5, ge=0, description="std of each client's shift of the feature mean"
    )
    common_mu: bool = Field(
        False, description="one mu for all clients, kappa_i set through L_i (GradSkip's setting)"
    )

    @field_validator("kappa")
    @classmethod
    def _one_kappa_per_client(
        cls, kappa: float | list[float], info: ValidationInfo
    ) -> float | list[float]:
        num_clients = (info.context or {}).get("num_clients")
        if isinstance(kappa, list) and num_clients is not None and len(kappa) != num_clients:
            raise ValueError(f"{len(kappa)} kappa values given for {num_clients} clients")
        return kappa


def _sample(
    rng: np.random.Generator, means: np.ndarray, w: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """One row per mean: a ~ N(mean, I), b = [a^T w > 0] flipped with probability `noise`."""
    a = means + rng.standard_normal(means.shape)
    b = (a @ w > 0) ^ (rng.random(len(a)) < noise)
    return a.astype(np.float32), b.astype(np.int64)


def load(options: LogregOptions, cfg: DataConfig, seed: int) -> Dataset:
    """Draw every client's data, then set lambda_i from its float32 rows to hit kappa_i."""
    rng = np.random.default_rng(seed)
    n, m, d = cfg.num_clients, options.samples_per_client, options.dim
    kappa = np.broadcast_to(np.asarray(options.kappa, dtype=np.float64), (n,))
    w = rng.standard_normal(d)
    shifts = options.heterogeneity * rng.standard_normal((n, d))
    x_train, y_train = _sample(rng, np.repeat(shifts, m, axis=0), w, options.label_noise)
    test_clients = rng.integers(n, size=options.test_samples)
    x_test, y_test = _sample(rng, shifts[test_clients], w, options.label_noise)
    splits = [np.arange(i * m, (i + 1) * m) for i in range(n)]
    smooth = np.array([np.linalg.eigvalsh(_gram(x_train[idx]))[-1] / (4 * m) for idx in splits])
    if options.common_mu:  # scale client i's rows so that L_i = kappa_i mu for one mu
        top = int(np.argmax(kappa))
        mu = smooth[top] / (kappa[top] - 1)
        for i, idx in enumerate(splits):
            x_train[idx] *= np.float32(np.sqrt((kappa[i] - 1) * mu / smooth[i]))
        smooth = np.array([np.linalg.eigvalsh(_gram(x_train[idx]))[-1] / (4 * m) for idx in splits])
        l2 = np.full(n, mu)
        kappa = (smooth + l2) / l2
    else:
        l2 = smooth / (kappa - 1)
    meta = {"L": (smooth + l2).tolist(), "mu": l2.tolist(), "kappa": kappa.tolist()}
    return Dataset(x_train, y_train, x_test, y_test, 2, splits, l2, meta)


def _gram(a: np.ndarray) -> np.ndarray:
    """A^T A in float64."""
    a = a.astype(np.float64)
    return a.T @ a


def _signed_rows(
    ds: Dataset, splits: list[np.ndarray] | None, extra_l2: float = 0.0
) -> list[tuple[np.ndarray, float]]:
    """Per client: its rows times (2 b_j - 1) in float64, and lambda_i (+ extra_l2).

    `splits=None` means the dataset's natural split, or the whole train set as one client.
    """
    if splits is None:
        splits = ds.client_splits or [np.arange(len(ds.y_train))]
    l2 = (ds.client_l2 if ds.client_l2 is not None else np.zeros(len(splits))) + extra_l2
    return [
        (ds.x_train[idx].astype(np.float64) * (2.0 * ds.y_train[idx] - 1.0)[:, None], float(lam))
        for idx, lam in zip(splits, l2, strict=True)
    ]


def _loss_grad(clients: list[tuple[np.ndarray, float]], x: np.ndarray) -> tuple[float, np.ndarray]:
    """F(x) = (1/n) sum_i f_i(x) and its gradient."""
    from scipy.special import expit  # here: slow to import, and a scenario's checks need none

    loss, grad = 0.0, np.zeros_like(x)
    for c, lam in clients:
        margin = c @ x
        loss += np.logaddexp(0.0, -margin).mean() + 0.5 * lam * (x @ x)
        grad += -(c.T @ expit(-margin)) / len(c) + lam * x
    return loss / len(clients), grad / len(clients)


def _hessian(clients: list[tuple[np.ndarray, float]], x: np.ndarray) -> np.ndarray:
    """Exact Hessian of F at x."""
    from scipy.special import expit

    hess = np.zeros((x.size, x.size))
    for c, lam in clients:
        p = expit(c @ x)
        hess += (c.T * (p * (1 - p))) @ c / len(c) + lam * np.eye(x.size)
    return hess / len(clients)


def logreg_loss_grad(
    ds: Dataset, x: np.ndarray, splits: list[np.ndarray] | None = None
) -> tuple[float, np.ndarray]:
    """F(x) = (1/n) sum_i f_i(x) over the clients of `splits` and its gradient, in float64."""
    return _loss_grad(_signed_rows(ds, splits), np.asarray(x, dtype=np.float64))


def logreg_constants(
    ds: Dataset, splits: list[np.ndarray] | None = None, extra_l2: float = 0.0
) -> tuple[list[float], list[float]]:
    """Each client's L_i = lambda_max(A_i^T A_i) / (4 m_i) + lambda_i and mu_i = lambda_i."""
    clients = _signed_rows(ds, splits, extra_l2)
    smooth = [np.linalg.eigvalsh(_gram(c))[-1] / (4 * len(c)) + lam for c, lam in clients]
    return smooth, [lam for _, lam in clients]


def logreg_optimum(
    ds: Dataset,
    splits: list[np.ndarray] | None = None,
    extra_l2: float = 0.0,
    tol: float = 1e-12,
    max_iter: int = 100,
) -> np.ndarray:
    """x* of F (+ (extra_l2/2)||x||^2), by Newton's method with exact Hessians and
    backtracking, to ||grad|| <= tol."""
    clients = _signed_rows(ds, splits, extra_l2)
    x = np.zeros(ds.x_train.shape[1])
    for _ in range(max_iter):
        loss, grad = _loss_grad(clients, x)
        if np.linalg.norm(grad) <= tol:
            return x
        step = np.linalg.solve(_hessian(clients, x), grad)
        decrement = grad @ step  # squared Newton decrement: the predicted decrease times 2
        t = 1.0
        # Below ~1e-12 the decrease is at rounding level: take the full (quadratically
        # convergent) step instead of comparing losses that differ only by noise.
        while decrement > 1e-12 and _loss_grad(clients, x - t * step)[0] > loss - t * decrement / 4:
            t /= 2
        x = x - t * step
    raise RuntimeError(f"Newton did not reach ||grad|| <= {tol} in {max_iter} iterations")


DATASETS.register(
    "logreg",
    DatasetSpec(LogregOptions, load, natural=True),
    "generated l2-regularised logistic regression, condition number kappa set per client",
)
