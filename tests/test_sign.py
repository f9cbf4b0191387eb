"""signSGD-MV, Signum-MV and EF-SignSGD against NumPy implementations of docs/algorithms.md
section 5, the vote against a reference, and the held-model protocol's bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.codecs import codec
from fedsim.config import load_scenario
from fedsim.methods.signsgd import vote
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator

from .conftest import logreg_grad, logreg_parts

N, DIM = 5, 10


def scenario(rounds=6, **alg):
    return load_scenario(
        {
            "seed": 2,
            "rounds": rounds,
            "data": {
                "dataset": "logreg",
                "num_clients": N,
                "partitioner": "natural",
                "options": {"dim": DIM, "samples_per_client": 40, "kappa": [5.0, 10, 20, 40, 80]},
            },
            "model": {"name": "logreg", "bias": False},
            "algorithm": {"batch_size": 0, **alg},
        }
    )


def test_the_vote_is_the_sign_of_the_sum_with_ties_at_zero():
    rng = np.random.default_rng(0)
    for voters in (2, 3, 4, 7, 10):  # even counts make ties
        signs = rng.choice([-1.0, 1.0], size=(voters, 1000)).astype(np.float32)
        total = signs.sum(0)
        expected = np.where(total > 0, 1.0, np.where(total < 0, -1.0, 0.0))
        np.testing.assert_array_equal(
            vote(torch.from_numpy(signs.mean(0, dtype=np.float32))).numpy(), expected
        )
        if voters % 2 == 0:
            assert (expected == 0).any()


def numpy_sign_mv(s, rounds, beta=0.0):
    """x <- x - delta (sign(sum_i sign(m_i)) + wd x), m_i <- beta m_i + (1 - beta) g_i."""
    a, parts = s.algorithm, logreg_parts(s)
    x = Evaluator(s).initial_params().astype(np.float64)
    m = [np.zeros_like(x) for _ in parts]
    for r in range(1, rounds + 1):
        for i, part in enumerate(parts):
            g = logreg_grad(part, x)
            m[i] = beta * m[i] + (1 - beta) * g if beta else g
        v = np.sign(np.sum([np.where(mi >= 0, 1.0, -1.0) for mi in m], axis=0))
        lr = a.server_lr if a.schedule == "constant" else a.server_lr / math.sqrt(r)
        x = x - lr * (v + a.weight_decay * x)
    return x


@pytest.mark.parametrize(
    "name, extra",
    [
        ("signsgd_mv", {}),
        ("signum_mv", {"momentum": 0.8}),
        ("signsgd_mv", {"schedule": "inv_sqrt"}),
    ],
)
def test_majority_vote_methods_match_the_update_rules(tmp_path, name, extra):
    s = scenario(name=name, server_lr=0.02, weight_decay=0.1, **extra)
    launch(s, tmp_path)
    ref = numpy_sign_mv(s, 6, beta=s.algorithm.momentum)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), ref, rtol=1e-5, atol=1e-6)
    rows = read_metrics(tmp_path)
    sign_bytes, ternary_bytes = codec("sign").nbytes(DIM), codec("ternary").nbytes(DIM)
    assert all(r["bytes_up"] == N * sign_bytes for r in rows)
    assert rows[0]["bytes_down"] == N * codec("fp32").nbytes(DIM)  # the first model, in full
    assert all(r["bytes_down"] == N * ternary_bytes for r in rows[1:])  # then only votes


def numpy_ef_sign(s, rounds):
    """p_i = gamma g_i + e_i, Delta_i = (||p_i||_1/d) sign(p_i), e_i = p_i - Delta_i; with a
    server memory the same compression of mean_i Delta_i + e is the step."""
    a, parts = s.algorithm, logreg_parts(s)
    x = Evaluator(s).initial_params().astype(np.float64)
    d = x.size
    e, e_server = [np.zeros(d) for _ in parts], np.zeros(d)

    def compress(p):
        return np.abs(p).sum() / d * np.where(p >= 0, 1.0, -1.0)

    for _ in range(rounds):
        deltas = []
        for i, part in enumerate(parts):
            p = a.client_lr * logreg_grad(part, x) + e[i]
            deltas.append(compress(p))
            e[i] = p - deltas[-1]
        step = np.mean(deltas, axis=0)
        if a.server_memory:
            p = step + e_server
            step = compress(p)
            e_server = p - step
        x = x - step
    return x


@pytest.mark.parametrize("memory", [True, False])
def test_ef_signsgd_matches_the_update_rules(tmp_path, memory):
    s = scenario(name="ef_signsgd", client_lr=0.3, server_memory=memory)
    launch(s, tmp_path)
    np.testing.assert_allclose(
        np.load(tmp_path / "final_model.npy"), numpy_ef_sign(s, 6), rtol=1e-5, atol=1e-6
    )
    down = read_metrics(tmp_path)[-1]["bytes_down"]
    assert down == N * codec("scaled_sign" if memory else "fp32").nbytes(DIM)


def test_signsgd_stalls_where_ef_signsgd_converges(tmp_path):
    """Heterogeneous clients, full gradients: the vote's fixed point is not x*, whatever the
    step size schedule, while error feedback keeps the lost information and converges."""
    sign = scenario(400, name="signsgd_mv", server_lr=0.05, schedule="inv_sqrt")
    ef = scenario(400, name="ef_signsgd", client_lr=0.5, schedule="inv_sqrt")
    launch(sign, tmp_path / "sign")
    launch(ef, tmp_path / "ef")
    stalled = [r["rel_dist_to_opt"] for r in read_metrics(tmp_path / "sign")]
    converged = [r["rel_dist_to_opt"] for r in read_metrics(tmp_path / "ef")]
    assert min(stalled[100:]) > 1e-2 and stalled[-1] > 0.5 * stalled[99]  # no progress
    assert converged[-1] < 1e-3 and converged[-1] < 0.01 * stalled[-1]


def test_clients_that_missed_a_round_are_sent_the_model(tmp_path):
    """With half the clients a round, the step-broadcast run equals the whole-model run
    bit for bit (clients one by one; batched cohorts group the two kinds of client apart,
    which changes float32 rounding only); only the bytes differ, by a model for each client
    that did not take part last round."""
    common = {"name": "signum_mv", "server_lr": 0.02, "fraction": 0.6}
    for broadcast in ("step", "model"):
        s = scenario(8, **common, broadcast=broadcast)
        launch(load_scenario(s.to_dict() | {"execution": "sequential"}), tmp_path / broadcast)
        launch(s, tmp_path / f"{broadcast}-vectorized")
    a, b = (np.load(tmp_path / f"{k}-vectorized/final_model.npy") for k in ("step", "model"))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    step, model = read_metrics(tmp_path / "step"), read_metrics(tmp_path / "model")
    for a, b in zip(step, model, strict=True):
        for key in ("train_loss", "eval_loss", "dist_to_opt", "bytes_up"):
            assert a[key] == b[key]
    np.testing.assert_array_equal(
        np.load(tmp_path / "step/final_model.npy"), np.load(tmp_path / "model/final_model.npy")
    )
    clients = read_metrics(tmp_path / "step", "clients.jsonl")
    full, vote_bytes = codec("fp32").nbytes(DIM), codec("ternary").nbytes(DIM)
    mixed = 0
    for r, row in enumerate(step, start=1):
        mine = {c["partition"] for c in clients if c["round"] == r}
        before = {c["partition"] for c in clients if c["round"] == r - 1}
        assert row["bytes_down"] == sum(vote_bytes if p in before else full for p in mine)
        mixed += 0 < len(mine & before) < len(mine)
    assert mixed >= 2  # rounds with both kinds of client
