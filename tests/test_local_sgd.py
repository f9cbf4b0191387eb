"""Local SGD against independent numerics: centralized GD step for step, and convergence to x*."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import load_scenario
from fedsim.data import client_data, load_dataset
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator

CLIENTS = 4


def logreg_scenario(rounds: int, steps: int, lr: float | None = None, **alg):
    raw = {
        "name": "logreg",
        "seed": 1,
        "rounds": rounds,
        "data": {
            "dataset": "logreg",
            "num_clients": CLIENTS,
            "partitioner": "natural",
            "options": {"dim": 8, "samples_per_client": 40, "kappa": [5.0, 10.0, 20.0, 10.0]},
        },
        "model": {"name": "logreg", "bias": False},
        "algorithm": {"name": "local_sgd", "local_steps": steps, "batch_size": 0, **alg},
    }
    s = load_scenario(raw)
    L = max(load_dataset(s.data, s.seed).meta["L"])
    return load_scenario(raw, [f"algorithm.client_lr={lr or 1.0 / L}"])


def numpy_gradient(s):
    """grad F(x) for F = (1/n) sum_i [mean_j log(1+exp(-s_j a_j.x)) + l2_i/2 |x|^2], float64."""
    parts = [client_data(s.data, s.seed, i) for i in range(CLIENTS)]

    def grad(x):
        g = np.zeros_like(x)
        for a, y, l2 in parts:
            a = a.astype(np.float64)
            sign = 2.0 * y - 1.0
            g += -(a.T @ (sign / (1.0 + np.exp(sign * (a @ x))))) / len(y) + l2 * x
        return g / len(parts)

    return grad


def run(s, tmp_path):
    launch(s, tmp_path)
    return read_metrics(tmp_path), np.load(tmp_path / "final_model.npy")


def test_one_local_step_with_full_participation_is_centralized_gd(tmp_path):
    s = logreg_scenario(rounds=15, steps=1)
    rows, x_final = run(s, tmp_path)
    ev = Evaluator(s)
    grad, x = numpy_gradient(s), ev.initial_params().astype(np.float64)
    for row in rows:
        x = x - s.algorithm.client_lr * grad(x)
        assert row["dist_to_opt"] == pytest.approx(np.sum((x - ev.optimum) ** 2), rel=1e-4)
    np.testing.assert_allclose(x_final, x, rtol=1e-5, atol=1e-6)


def test_local_gd_converges_to_the_centralized_optimum(tmp_path):
    s = logreg_scenario(rounds=150, steps=1)
    rows, x_final = run(s, tmp_path)
    x_star = Evaluator(s).optimum
    start = np.sum((Evaluator(s).initial_params() - x_star) ** 2)
    assert np.sum((x_final - x_star) ** 2) <= 1e-9 * start
    assert rows[-1]["dist_to_opt"] <= 1e-9 * start


def test_more_local_steps_reach_a_neighbourhood_faster_per_round(tmp_path):
    """With client drift Local GD stalls near x*, but H=5 gets there in fewer rounds than H=1."""
    one = run(logreg_scenario(rounds=10, steps=1), tmp_path / "h1")[0]
    five = run(logreg_scenario(rounds=10, steps=5), tmp_path / "h5")[0]
    assert five[-1]["dist_to_opt"] < one[-1]["dist_to_opt"]
    assert five[-1]["grad_evals"] == 5 * one[-1]["grad_evals"] == 5 * CLIENTS
