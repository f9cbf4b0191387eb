"""Differential privacy: Opacus's private gradients against a per-example loop, clipping
bounds, noise scale, epsilon against Opacus's accountant stepped independently, the
sigma = 0 limit, and input errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from fedsim.config import ScenarioError
from fedsim.privacy.mechanisms import PrivateGradients, clip, gaussian
from fedsim.results import read_metrics
from fedsim.runtime import launch

from .conftest import REPO, logreg_scenario, small_scenario


def test_private_gradient_is_the_clipped_per_example_sum_over_the_expected_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = 3 * torch.randn(8, 6), torch.randint(0, 3, (8,))
    c, expected = 0.3, 10.0
    _, grads = PrivateGradients(model, 0.0, c)(nn.functional.cross_entropy, x, y, expected, None)
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(y)):  # an independent per-example loop
        g = torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters())
        )
        norm = torch.sqrt(sum((gi**2).sum() for gi in g))
        scale = min(1.0, c / (float(norm) + 1e-6))
        assert float(norm) * scale <= c + 1e-6  # every example's gradient has norm <= C
        total = [t + scale * gi for t, gi in zip(total, g, strict=True)]
    for ours, ref in zip(grads, total, strict=True):
        torch.testing.assert_close(ours, ref / expected, rtol=1e-5, atol=1e-7)


def test_noise_std_is_sigma_times_c():
    sigma, c, expected = 1.3, 0.7, 4.0
    model = nn.Linear(50, 20)
    private = PrivateGradients(model, sigma, c)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(40):  # empty Poisson batches: the gradient is the noise over the batch
        _, grads = private(
            nn.functional.cross_entropy, torch.zeros(0, 50), torch.zeros(0).long(), expected, gen
        )
        draws.append(torch.cat([g.reshape(-1) for g in grads]) * expected)
    std = float(torch.cat(draws).std())
    assert std == pytest.approx(sigma * c, rel=0.05)
    rng = np.random.default_rng(0)
    noisy = gaussian(np.zeros(200_000, np.float32), sigma * c, rng)
    assert float(noisy.std()) == pytest.approx(sigma * c, rel=0.05)


def test_clipped_updates_have_norm_at_most_c():
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1.0, 1e3):
        v = (scale * rng.standard_normal(1000)).astype(np.float32)
        out = clip(v, 0.5)
        assert np.linalg.norm(out) <= 0.5 * (1 + 1e-6)
        if np.linalg.norm(v) <= 0.5:
            np.testing.assert_array_equal(out, v)


def independent_epsilon(sigma, q, steps, delta):
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta)


def dp_scenario(mechanism, **privacy):
    return small_scenario(
        rounds=4,
        algorithm={"name": "local_sgd", "local_steps": 3, "batch_size": 16, "client_lr": 0.2},
        privacy={"mechanism": mechanism, "max_grad_norm": 0.8, **privacy},
    )


def test_sample_level_epsilon_is_opacus_accountant_over_each_clients_steps(tmp_path):
    s = dp_scenario("dp_sgd", epsilon=3.0)
    launch(s, tmp_path)
    from fedsim.data import client_data

    sigma, rows = s.privacy.noise_multiplier, read_metrics(tmp_path)
    clients = read_metrics(tmp_path, "clients.jsonl")
    worst = 0.0
    for pid in range(s.data.num_clients):
        n = len(client_data(s.data, s.seed, pid)[1])
        steps = sum(c["grad_evals"] for c in clients if c["partition"] == pid)
        worst = max(worst, independent_epsilon(sigma, 16 / n, steps, s.privacy.delta))
    assert rows[-1]["epsilon"] == pytest.approx(worst, rel=1e-9)
    assert 0.9 * 3.0 <= rows[-1]["epsilon"] <= 3.0  # calibrated to the target
    assert [r["epsilon"] for r in rows] == sorted(r["epsilon"] for r in rows)


def test_client_level_epsilon_is_opacus_accountant_over_rounds(tmp_path):
    s = dp_scenario("dp_fedavg", noise_multiplier=1.1)
    launch(s, tmp_path)
    for r, row in enumerate(read_metrics(tmp_path), start=1):
        assert row["epsilon"] == pytest.approx(independent_epsilon(1.1, 1.0, r, 1e-5), rel=1e-9)


@pytest.mark.parametrize("mechanism", ["dp_sgd", "dp_fedavg", "local"])
def test_no_noise_and_a_huge_clip_is_the_non_private_run(tmp_path, mechanism):
    """Full batches (Poisson with rate 1 is every example) and equal client sizes, so each
    mechanism's only effects are its clipping and noise, both switched off."""
    alg = {"name": "local_sgd", "local_steps": 2, "batch_size": 0}
    private = {"mechanism": mechanism, "noise_multiplier": 0.0, "max_grad_norm": 1e9}
    plain = logreg_scenario(3, 6, 30, [5.0, 20.0, 10.0], alg, 5)
    launch(plain, tmp_path / "plain")
    launch(logreg_scenario(3, 6, 30, [5.0, 20.0, 10.0], alg, 5, privacy=private), tmp_path / "dp")
    np.testing.assert_allclose(
        np.load(tmp_path / "dp/final_model.npy"),
        np.load(tmp_path / "plain/final_model.npy"),
        rtol=1e-5,
        atol=1e-7,
    )


@pytest.mark.parametrize(
    "privacy, message",
    [
        ({"epsilon": 0}, "scenario.privacy.epsilon: 0"),
        ({"epsilon": -1}, "scenario.privacy.epsilon: -1"),
        ({"noise_multiplier": -0.5}, "scenario.privacy.noise_multiplier: -0.5"),
        ({"noise_multiplier": 1, "max_grad_norm": 0}, "scenario.privacy.max_grad_norm: 0"),
        ({"epsilon": 1e-3}, "scenario.privacy.epsilon: 0.001 cannot be met"),
        ({}, "scenario.privacy: mechanism 'dp_sgd' needs epsilon (a target) or noise_multiplier"),
    ],
)
def test_bad_privacy_settings_name_the_key(privacy, message):
    with pytest.raises(
        ScenarioError,
        match="^" + message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)"),
    ):
        dp_scenario("dp_sgd", **privacy)


def test_a_large_delta_warns():
    with pytest.warns(UserWarning, match=r"privacy\.delta: 0\.5 >= 1/6"):
        dp_scenario("dp_fedavg", noise_multiplier=1.0, delta=0.5)


def test_an_unreachable_target_exits_2_before_any_run_directory(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "run",
        "scenarios/quickstart.toml",
        "--out",
        str(out),
        "--set",
        "privacy.mechanism=dp_sgd",
        "--set",
        "privacy.epsilon=0.0001",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("fedsim: error: scenario.privacy.epsilon")
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "scaled_sgd", "preconditioner": "rmsprop", "local_steps": 2, "client_lr": 0.01},
        {"name": "gradskip", "p": 0.4, "q": 0.6, "client_lr": 0.05, "batch_size": 16},
        {"name": "signum_mv", "server_lr": 0.003},
    ],
    ids=lambda a: a["name"],
)
def test_every_gradient_method_stays_within_its_target(tmp_path, algorithm):
    s = small_scenario(
        rounds=3, algorithm=algorithm, privacy={"mechanism": "dp_sgd", "epsilon": 5.0}
    )
    launch(s, tmp_path)
    spent = read_metrics(tmp_path)[-1]["epsilon"]
    assert 0 < spent <= 5.0
