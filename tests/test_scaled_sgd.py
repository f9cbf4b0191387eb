"""Local SGD with scaling against NumPy references of docs/algorithms.md section 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.clients.objective import cohort_for
from fedsim.config import client_spec, load_scenario
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator

from .conftest import logreg_grad, logreg_parts, logreg_scenario, without_wall_clock

N, H, ROUNDS = 2, 3, 3


def scenario(preconditioner: str, **alg):
    algorithm = {
        "name": "scaled_sgd",
        "preconditioner": preconditioner,
        "local_steps": H,
        "batch_size": 0,
        "client_lr": 0.05,
        "beta": 0.5,
        "alpha": 0.1,
        **alg,
    }
    return logreg_scenario(2, 5, 20, [10.0, 30.0], algorithm, ROUNDS)


def hessian(part, x):
    a, sign, l2 = part
    sig = 1.0 / (1.0 + np.exp(-(a @ x)))
    return (a.T * (sig * (1 - sig))) @ a / len(sign) + l2 * np.eye(len(x))


def reference(s, adam: bool) -> np.ndarray:
    """Rounds of scaled Local SGD with the g*g statistic, float64, full gradients."""
    p, parts = s.algorithm, logreg_parts(s)
    x, d, v = Evaluator(s).initial_params().astype(np.float64), None, None
    d = np.ones_like(x)
    for _ in range(ROUNDS):
        locals_, stats = [], []
        for part in parts:
            xi, m = x.copy(), np.zeros_like(x)
            stats.append(logreg_grad(part, x) ** 2)
            for _ in range(H):
                g = logreg_grad(part, xi)
                m = p.beta1 * m + (1 - p.beta1) * g
                xi = xi - p.client_lr * (m if adam else g) / d
            locals_.append(xi)
        x = np.mean(locals_, axis=0)  # equal example counts: the weighted mean
        s_mean = np.mean(stats, axis=0)
        v = s_mean if v is None else p.beta * v + (1 - p.beta) * s_mean
        d = np.maximum(p.alpha, np.sqrt(v))
    return x


@pytest.mark.parametrize("kind", ["rmsprop", "adam"])
def test_scaled_local_sgd_matches_the_update_rules(tmp_path, kind):
    s = scenario(kind)
    launch(s, tmp_path)
    np.testing.assert_allclose(
        np.load(tmp_path / "final_model.npy"), reference(s, kind == "adam"), rtol=1e-4, atol=1e-6
    )
    d = 5
    per_client = 2 * (4 * d + 128) + 1 + 4  # model + statistic up; model + D_hat down
    for row in read_metrics(tmp_path):
        assert row["bytes_up"] == row["bytes_down"] == N * per_client


def test_oasis_statistic_is_an_unbiased_estimate_of_the_hessian_diagonal():
    """H v by double backward (one client) and by torch.func (a batched cohort) against the
    closed-form Hessian; z * (H z) averages to its diagonal."""
    s = scenario("oasis")
    x = torch.from_numpy(np.linspace(-0.5, 0.5, 5).astype(np.float32))
    part, x64 = logreg_parts(s)[0], x.numpy().astype(np.float64)
    h = hessian(part, x64)
    v = torch.from_numpy(np.arange(1.0, 6.0, dtype=np.float32))
    for clients in (1, 3):  # the loop engine, then the vmap engine
        f = cohort_for(client_spec(s), [0] * clients, vectorize=True)
        f.bind(x.repeat(clients, 1))
        hv = f.hessian_vector(f.all(), v.repeat(clients, 1))
        np.testing.assert_allclose(hv.numpy(), np.tile(h @ v.numpy(), (clients, 1)), rtol=1e-4)
    gen = torch.Generator().manual_seed(0)
    zs = torch.randint(0, 2, (4000, 5), generator=gen).float() * 2 - 1
    f = cohort_for(client_spec(s), [0] * len(zs), vectorize=True)
    f.bind(x.repeat(len(zs), 1))
    est = (zs * f.hessian_vector(f.all(), zs)).mean(0).numpy()
    np.testing.assert_allclose(est, np.diag(h), rtol=0.1, atol=0.1 * np.abs(h).max())


def test_oasis_and_the_local_ablation_run(tmp_path):
    for name, s in (("oasis", scenario("oasis")), ("local", scenario("rmsprop", variant="local"))):
        launch(s, tmp_path / name)
        rows = read_metrics(tmp_path / name)
        assert rows[-1]["dist_to_opt"] < rows[0]["dist_to_opt"]


def test_no_preconditioner_is_local_sgd_exactly(tmp_path):
    s = scenario("none", beta=0.9)
    plain = load_scenario(
        s.to_dict()
        | {"algorithm": {"name": "local_sgd", "local_steps": H, "batch_size": 0, "client_lr": 0.05}}
    )
    launch(s, tmp_path / "none")
    launch(plain, tmp_path / "plain")
    strip = without_wall_clock(read_metrics(tmp_path / "none"))
    again = without_wall_clock(read_metrics(tmp_path / "plain"))
    assert strip == again
