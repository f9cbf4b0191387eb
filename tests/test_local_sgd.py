"""Local SGD against independent numerics: centralized GD step for step, and convergence to x*."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator

from .conftest import logreg_grad, logreg_parts, logreg_scenario

CLIENTS = 4


def scenario(rounds: int, steps: int):
    alg = {"name": "local_sgd", "local_steps": steps, "batch_size": 0}
    return logreg_scenario(1, 8, 40, [5.0, 10.0, 20.0, 10.0], alg, rounds, name="logreg")


def numpy_gradient(s):
    """grad F(x) for F = (1/n) sum_i f_i, float64."""
    parts = logreg_parts(s)
    return lambda x: sum(logreg_grad(part, x) for part in parts) / len(parts)


def run(s, tmp_path):
    launch(s, tmp_path)
    return read_metrics(tmp_path), np.load(tmp_path / "final_model.npy")


def test_one_local_step_with_full_participation_is_centralized_gd(tmp_path):
    s = scenario(rounds=15, steps=1)
    rows, x_final = run(s, tmp_path)
    ev = Evaluator(s)
    grad, x = numpy_gradient(s), ev.initial_params().astype(np.float64)
    for row in rows:
        x = x - s.algorithm.client_lr * grad(x)
        assert row["dist_to_opt"] == pytest.approx(np.sum((x - ev.optimum) ** 2), rel=1e-4)
    np.testing.assert_allclose(x_final, x, rtol=1e-5, atol=1e-6)


def test_local_gd_converges_to_the_centralized_optimum(tmp_path):
    s = scenario(rounds=150, steps=1)
    rows, x_final = run(s, tmp_path)
    x_star = Evaluator(s).optimum
    start = np.sum((Evaluator(s).initial_params() - x_star) ** 2)
    assert np.sum((x_final - x_star) ** 2) <= 1e-9 * start
    assert rows[-1]["dist_to_opt"] <= 1e-9 * start


def test_more_local_steps_reach_a_neighbourhood_faster_per_round(tmp_path):
    """With client drift Local GD stalls near x*, but H=5 gets there in fewer rounds than H=1."""
    one = run(scenario(rounds=10, steps=1), tmp_path / "h1")[0]
    five = run(scenario(rounds=10, steps=5), tmp_path / "h5")[0]
    assert five[-1]["dist_to_opt"] < one[-1]["dist_to_opt"]
    assert five[-1]["grad_evals"] == 5 * one[-1]["grad_evals"] == 5 * CLIENTS
