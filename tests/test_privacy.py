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
from fedsim.privacy.clipping import PrivateGradients
from fedsim.privacy.mechanisms import clip, gaussian, poisson_batches
from fedsim.results import read_metrics, read_summary
from fedsim.runtime import launch

from .conftest import REPO, logreg_scenario, small_scenario

MODELS = {  # every kind of layer DP-SGD clips here, each with its per-example shapes
    "mlp": (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), (8, 6)),
    "conv": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 3, (3, 2), stride=2, dilation=(1, 2), padding=(1, 0), bias=False),
            nn.Flatten(),
            nn.Linear(3 * 4 * 2, 3),
        ),
        (8, 2, 7, 6),
    ),
    "groupnorm": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, bias=False),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.GroupNorm(4, 4, affine=False),  # no parameters: nothing to clip
            nn.Flatten(),
            nn.Linear(4 * 5 * 4, 3),
        ),
        (8, 2, 5, 4),
    ),
    "sequence": (
        lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Flatten(), nn.Linear(20, 3)),
        (8, 4, 6),
    ),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_private_gradient_is_the_clipped_per_example_sum_over_the_expected_batch(kind):
    torch.manual_seed(0)
    make, shape = MODELS[kind]
    model = make()
    x, y = 3 * torch.randn(*shape), torch.randint(0, 3, (shape[0],))
    c, expected = 0.3, 10.0
    _, flat = PrivateGradients(model, 0.0, c)(nn.functional.cross_entropy, x, y, expected, None)
    params = list(model.parameters())
    total = torch.zeros(sum(p.numel() for p in params))
    for i in range(len(y)):  # an independent per-example loop
        g = torch.autograd.grad(
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params
        )
        g = torch.cat([gi.reshape(-1) for gi in g])
        scale = min(1.0, c / (float(g.norm()) + 1e-6))
        assert float(g.norm()) * scale <= c + 1e-6  # every example's gradient has norm <= C
        total += scale * g
    torch.testing.assert_close(flat, total / expected, rtol=1e-5, atol=1e-7)
    # and Opacus's own per-sample gradients (its hooks), clipped by its formula
    from opacus.grad_sample import GradSampleModule

    gsm = GradSampleModule(model)
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = torch.cat([p.grad_sample.reshape(len(y), -1) for p in params], 1)
    clipped = samples * (c / (samples.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    gsm._close()
    assert float((flat * expected - clipped.sum(0)).abs().max()) < 1e-6


@pytest.mark.parametrize("kind", ["conv", "groupnorm"])
def test_a_cohort_of_private_clients_is_each_client_alone(kind):
    """The batched path (vmap over clients, padded Poisson batches) gives each client's
    gradient of the one-client path, noise included (the same generator draws)."""
    torch.manual_seed(1)
    make, shape = MODELS[kind]
    model = make()
    private = PrivateGradients(model, 1.1, 0.4)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    x = torch.stack(
        [torch.nn.utils.parameters_to_vector(model.parameters()) + 0.1 * k for k in range(3)]
    )
    batch = [torch.randn(k, *shape[1:]) for k in (5, 0, 8)]  # unequal, one empty
    labels = [torch.randint(0, 3, (len(b),)) for b in batch]
    width = 8
    xb = torch.zeros(3, width, *shape[1:])
    yb = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width)
    for c, (b, lab) in enumerate(zip(batch, labels, strict=True)):
        xb[c, : len(b)], yb[c, : len(b)], mask[c, : len(b)] = b, lab, 1.0

    def unflatten(v):
        return dict(
            zip(
                names,
                (t.view_as(p) for t, p in zip(v.split(sizes), model.parameters(), strict=True)),
                strict=True,
            )
        )

    expected = torch.tensor([6.0, 6.0, 7.0])
    means, totals = private.cohort(
        unflatten, nn.functional.cross_entropy, x, xb, yb, mask, expected
    )
    for c in range(3):
        torch.nn.utils.vector_to_parameters(x[c], model.parameters())
        alone_gen, cohort_gen = torch.Generator().manual_seed(c), torch.Generator().manual_seed(c)
        value, alone = private(
            nn.functional.cross_entropy, batch[c], labels[c], float(expected[c]), alone_gen
        )
        batched = private.noisy(means[c], float(expected[c]), cohort_gen)
        torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
        assert float(totals[c]) == pytest.approx(value * len(batch[c]), rel=1e-5, abs=1e-6)


def test_a_layer_it_cannot_clip_is_refused_at_load(monkeypatch):
    from fedsim.models import MODELS as REGISTRY
    from fedsim.models import register_model

    monkeypatch.setattr(REGISTRY, "_entries", dict(REGISTRY._entries))  # restored afterwards

    @register_model("normed", doc="a Linear, a LayerNorm and a Linear")
    def normed(options, in_features, classes):
        return nn.Sequential(nn.Linear(in_features, 8), nn.LayerNorm(8), nn.Linear(8, classes))

    dp = {"mechanism": "dp_sgd", "noise_multiplier": 1.0}
    message = (
        "scenario.model.name: 'normed' with privacy.mechanism 'dp_sgd': layer '1' is a LayerNorm"
    )
    with pytest.raises(ScenarioError, match="^" + message.replace(".", r"\.")):
        small_scenario(model={"name": "normed"}, privacy=dp)
    small_scenario(model={"name": "normed"})  # without DP-SGD it loads


def test_a_layer_run_twice_in_one_forward_pass_is_an_error_not_a_wrong_gradient():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x):
            return self.layer(torch.tanh(self.layer(x)))

    private = PrivateGradients(Twice(), 0.0, 1.0)
    with pytest.raises(ValueError, match="layer 'layer' runs twice in one forward pass"):
        private(nn.functional.cross_entropy, torch.randn(3, 4), torch.tensor([0, 1, 2]), 3.0, None)


def test_noise_std_is_sigma_times_c():
    sigma, c, expected = 1.3, 0.7, 4.0
    model = nn.Linear(50, 20)
    private = PrivateGradients(model, sigma, c)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(40):  # empty Poisson batches: the gradient is the noise over the batch
        _, flat = private(
            nn.functional.cross_entropy, torch.zeros(0, 50), torch.zeros(0).long(), expected, gen
        )
        draws.append(flat * expected)
    std = float(torch.cat(draws).std())
    assert std == pytest.approx(sigma * c, rel=0.05)
    rng = np.random.default_rng(0)
    noisy = gaussian(np.zeros(200_000, np.float32), sigma * c, rng)
    assert float(noisy.std()) == pytest.approx(sigma * c, rel=0.05)


def test_poisson_batches_are_opacus_samplers_draws():
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    ours = list(poisson_batches(300, 0.1, 25, torch.Generator().manual_seed(7)))
    sampler = UniformWithReplacementSampler(
        num_samples=300, sample_rate=0.1, generator=torch.Generator().manual_seed(7), steps=25
    )
    assert [b.tolist() for b in ours] == [list(b) for b in sampler]
    assert all(b.dtype == torch.long for b in ours) and 0 < sum(map(len, ours)) < 300 * 25


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


def test_the_dp_fedavg_cohort_is_poisson_sampled_at_rate_q():
    from servers.nodes import poisson_partitions

    n, q, rounds = 10, 0.3, 3000
    counts = np.zeros(n)
    sizes = []
    for r in range(1, rounds + 1):
        picked = poisson_partitions(range(n), q, 7, r)
        counts[picked] += 1
        sizes.append(len(picked))
    sigma = np.sqrt(rounds * q * (1 - q))
    assert np.all(np.abs(counts - rounds * q) <= 3 * sigma)  # each client's inclusion rate
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.15)  # Binomial, not fixed
    assert poisson_partitions(range(n), q, 7, 5) == poisson_partitions(range(n), q, 7, 5)


def independent_prv(sigma, q, steps, delta):
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_dp_fedavg_samples_by_poisson_and_accounts_for_it(tmp_path, accountant):
    s = small_scenario(
        rounds=6,
        algorithm={"name": "local_sgd", "local_steps": 2, "batch_size": 16, "fraction": 0.4},
        privacy={"mechanism": "dp_fedavg", "noise_multiplier": 1.2, "accountant": accountant},
    )
    launch(s, tmp_path)
    rows, summary = read_metrics(tmp_path), read_summary(tmp_path)
    assert len({r["invited"] for r in rows}) > 1  # the cohort's size is random
    reference = independent_prv if accountant == "prv" else independent_epsilon
    for r, row in enumerate(rows, start=1):
        assert row["epsilon"] == pytest.approx(reference(1.2, 0.4, r, 1e-5), rel=1e-6)
    p = summary["privacy"]
    assert "Poisson sampling of clients at rate algorithm.fraction" in p["accountant_assumes"]
    assert p["run_sampling"].startswith("Poisson cohorts")


def test_an_empty_poisson_cohort_still_releases_the_noise(tmp_path):
    s = small_scenario(
        rounds=8,
        data__num_clients=3,
        algorithm={"name": "local_sgd", "local_steps": 1, "batch_size": 16, "fraction": 0.15},
        privacy={"mechanism": "dp_fedavg", "noise_multiplier": 1.0},
    )
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    empty = [r for r in rows if r["invited"] == 0]
    assert empty and all(r["updated"] for r in empty)  # noise alone moved the model
    assert rows[-1]["epsilon"] == pytest.approx(independent_epsilon(1.0, 0.15, 8, 1e-5), rel=1e-6)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"algorithm__min_clients": 2}, "scenario.algorithm.min_clients: 2 with privacy.mechanism"),
        (
            {"system": {"policy": "overcommit", "overcommit": 0.5}},
            "scenario.system.policy: 'overcommit' with privacy.mechanism 'dp_fedavg'",
        ),
        ({"privacy__epsilon_report": "participation"}, "scenario.privacy.epsilon_report"),
    ],
)
def test_sampling_the_accountant_does_not_assume_is_refused(over, message):
    with pytest.raises(ScenarioError, match="^" + message.replace(".", r"\.")):
        small_scenario(
            algorithm={"name": "local_sgd", "fraction": 0.5},
            privacy={"mechanism": "dp_fedavg", "noise_multiplier": 1.0},
            **over,
        )


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_dp_sgd_reports_every_round_and_actual_participation(tmp_path, accountant):
    from fedsim.data import client_data

    s = small_scenario(
        rounds=4,
        algorithm={"name": "local_sgd", "local_steps": 3, "batch_size": 16, "fraction": 0.5},
        privacy={"mechanism": "dp_sgd", "noise_multiplier": 1.0, "accountant": accountant},
    )
    launch(s, tmp_path)
    rows, clients = read_metrics(tmp_path), read_metrics(tmp_path, "clients.jsonl")
    reference = independent_prv if accountant == "prv" else independent_epsilon
    sizes = [len(client_data(s.data, s.seed, pid)[1]) for pid in range(s.data.num_clients)]
    for r, row in enumerate(rows, start=1):  # as if the smallest client took part each round
        assert row["epsilon"] == pytest.approx(
            reference(1.0, 16 / min(sizes), 3 * r, 1e-5), rel=1e-6
        )
    actual = max(
        reference(1.0, 16 / n, sum(c["grad_evals"] for c in clients if c["partition"] == pid), 1e-5)
        for pid, n in enumerate(sizes)
        if any(c["partition"] == pid for c in clients)
    )
    assert rows[-1]["epsilon_participation"] == pytest.approx(actual, rel=1e-6)
    assert rows[-1]["epsilon_participation"] < rows[-1]["epsilon"]  # half the rounds each
    p = read_summary(tmp_path)["privacy"]
    assert p["epsilon_reported"] == "every_round" and p["final_epsilon"] == rows[-1]["epsilon"]
    assert p["epsilon_participation"] == rows[-1]["epsilon_participation"]
    assert "Poisson batches" in p["run_sampling"]
