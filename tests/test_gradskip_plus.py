"""GradSkip+ against a NumPy implementation of its update rules with the compression
operators written out as random scaled masks, and its special cases."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.codecs import fp32_bytes
from fedsim.config import ScenarioError
from fedsim.methods.proxskip import communicated, round_length, skip_operator
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.seeding import torch_generator
from fedsim.servers.evaluate import Evaluator

from .conftest import logreg_grad, logreg_parts, logreg_scenario, without_wall_clock
from .test_proxskip import numpy_proxskip
from .test_proxskip import scenario as proxskip_scenario

N, D = 4, 6


def scenario(rounds=12, **alg):
    algorithm = {"name": "gradskip_plus", "p": 0.3, **alg}
    return logreg_scenario(5, D, 30, [5.0, 20.0, 10.0, 40.0], algorithm, rounds)


def reference_prox(kind: str, v: np.ndarray, t: float) -> np.ndarray:
    if kind == "l1":
        return np.where(v > t, v - t, np.where(v < -t, v + t, 0.0))
    return v / (1 + t) if kind == "l2" else v


def numpy_gradskip_plus(s, rounds):
    """GradSkip+ in float64: h_hat = g - (I + Omega)^-1 C_Omega(g - h), x_hat = x - gamma
    (g - h_hat), x = x_hat - C_omega(x_hat - prox(x_hat - tau h_hat)) / (1 + omega),
    h = h_hat + (x - x_hat) / tau, with C_Omega_i(v) = (eta_i / q_i)(d / k_i) M_i v and
    C_omega(v) = (theta / p)(d / k) S v. The random draws are fedsim's; the algebra is not."""
    a, parts = s.algorithm, logreg_parts(s)
    gamma, p = a.client_lr, a.p
    q = a.q if isinstance(a.q, list) else [a.q] * N
    x0 = Evaluator(s).initial_params().astype(np.float64)
    d = x0.size
    k_skip, k_comm = max(1, round(a.skip_density * d)), max(1, round(a.comm_density * d))
    one_plus_omega = d / (p * k_comm)
    tau = gamma * one_plus_omega
    xs, h, server = [x0.copy() for _ in range(N)], [np.zeros(d) for _ in range(N)], x0.copy()
    for r in range(1, rounds + 1):
        k = round_length(p, s.seed, r)
        gens = [torch_generator(s.seed, r, i) for i in range(N)]
        frozen = [False] * N
        for t in range(1, k + 1):
            x_hat, h_hat = [], []
            for i in range(N):
                g = logreg_grad(parts[i], xs[i])
                # a frozen client has h = g at an unchanged x: any draw gives C_Omega = 0
                eta, mask = (False, None) if frozen[i] else skip_operator(gens[i], q[i], d, k_skip)
                frozen[i] = frozen[i] or not eta
                m = np.zeros(d)
                m[slice(None) if mask is None else mask.numpy()] = 1.0
                c_omega_i = (eta / q[i]) * (d / k_skip) * m * (g - h[i])
                h_hat.append(g - (q[i] * k_skip / d) * c_omega_i)
                x_hat.append(xs[i] - gamma * (g - h_hat[i]))
            if t == k:  # theta = 1
                idx = communicated(a, d, s.seed, r)
                sel = np.zeros(d)
                sel[slice(None) if idx is None else idx] = 1.0
                z = reference_prox(
                    a.regularizer,
                    np.mean([x_hat[i] - tau * h_hat[i] for i in range(N)], 0),
                    tau * a.reg,
                )
                xs = [
                    x_hat[i] - (sel * (x_hat[i] - z) / p * (d / k_comm)) / one_plus_omega
                    for i in range(N)
                ]
                server = np.where(sel > 0, z, server)
            else:
                xs = x_hat
            h = [h_hat[i] + (xs[i] - x_hat[i]) / tau for i in range(N)]
    return server, xs


@pytest.mark.parametrize("reg", ["l2", "l1"])
def test_gradskip_plus_matches_its_update_rules(tmp_path, reg):
    s = scenario(
        rounds=12,
        q=[0.5, 1.0, 0.8, 1.0],
        comm_density=0.5,
        skip_density=0.5,
        regularizer=reg,
        reg=0.05,
    )
    launch(s, tmp_path)
    server, _ = numpy_gradskip_plus(s, 12)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), server, rtol=1e-4, atol=1e-6)
    rows = read_metrics(tmp_path)  # a message up carries the k = d/2 averaged coordinates
    assert {r["bytes_up"] for r in rows} == {N * fp32_bytes(D // 2)}


def test_the_reference_with_full_operators_is_proxskip():
    """The algebra of GradSkip+ with q = 1, k = d and R = 0 is ProxSkip's."""
    server, xs = numpy_gradskip_plus(proxskip_scenario(rounds=10), 10)
    x_ref, _ = numpy_proxskip(proxskip_scenario(rounds=10), 10)
    np.testing.assert_allclose(server, x_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xs[2], x_ref, rtol=1e-12, atol=1e-12)


def test_gradskip_plus_defaults_run_proxskip_and_gradskip(tmp_path):
    for name, alg in (("proxskip", {}), ("gradskip", {"q": [0.5, 1.0, 0.8, 1.0]})):
        launch(proxskip_scenario(name, **alg), tmp_path / name)
        launch(proxskip_scenario("gradskip_plus", **alg), tmp_path / f"{name}+")
        plus = read_metrics(tmp_path / f"{name}+")
        assert without_wall_clock(read_metrics(tmp_path / name)) == without_wall_clock(plus)


def test_gradskip_plus_converges_to_the_regularised_optimum(tmp_path):
    s = scenario(rounds=150, comm_density=0.5, skip_density=0.5, regularizer="l2", reg=0.1)
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    assert rows[-1]["rel_dist_to_opt"] < 1e-6  # x* of F + (0.1/2)||x||^2, from Newton


def test_the_proxskip_family_needs_full_participation():
    with pytest.raises(ScenarioError, match=r"algorithm.fraction: 0.5 leaves clients out"):
        scenario(comm_density=0.5, fraction=0.5)
