"""ProxSkip / GradSkip against a NumPy implementation of the update rules of docs/algorithms.md."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedsim.clients.app import PENDING, PENDING_VALUES, STATE, STATE_VALUES, committed
from fedsim.clients.app import app as client_app
from fedsim.codecs import pack, unpack
from fedsim.config import ScenarioError, load_scenario
from fedsim.data import load_dataset
from fedsim.method import Received
from fedsim.methods.proxskip import (
    ClientState,
    ProxSkip,
    ProxSkipParams,
    round_length,
    start_of_round,
)
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.driver import run_rounds
from fedsim.servers.evaluate import Evaluator

from .conftest import logreg_grad, logreg_parts, logreg_scenario, without_wall_clock

N = 4


def scenario(name="proxskip", rounds=12, p=0.3, **alg):
    algorithm = {"name": name, "p": p, **alg}
    return logreg_scenario(5, 6, 30, [5.0, 20.0, 10.0, 40.0], algorithm, rounds)


def numpy_proxskip(s, rounds):
    """The iteration form of docs/algorithms.md section 3, float64, full gradients."""
    parts = logreg_parts(s)

    def grad(i, x):
        return logreg_grad(parts[i], x)

    gamma, p = s.algorithm.client_lr, s.algorithm.p
    x0 = Evaluator(s).initial_params().astype(np.float64)
    xs, h = [x0.copy() for _ in range(N)], [np.zeros_like(x0) for _ in range(N)]
    for r in range(1, rounds + 1):
        k = round_length(p, s.seed, r)
        for t in range(1, k + 1):
            x_hat = [xs[i] - gamma * (grad(i, xs[i]) - h[i]) for i in range(N)]
            if t == k:  # the shared coin says communicate
                avg = np.mean([x_hat[i] - (gamma / p) * h[i] for i in range(N)], axis=0)
                xs = [avg.copy() for _ in range(N)]
            else:
                xs = x_hat
            h = [h[i] + (p / gamma) * (xs[i] - x_hat[i]) for i in range(N)]
    return xs[0], h


def test_proxskip_matches_the_update_rules(tmp_path):
    s = scenario(rounds=12)
    launch(s, tmp_path)
    x_ref, _ = numpy_proxskip(s, 12)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), x_ref, rtol=1e-4, atol=1e-6)
    rows = read_metrics(tmp_path)
    assert [r["grad_evals"] for r in rows] == [N * round_length(0.3, 5, r) for r in range(1, 13)]


def control_variates(grid: InProcessGrid, s, last_applied: int, x: np.ndarray) -> list:
    """Each client's h_i after the last applied round: h_hat_i + (p/gamma)(x - x_hat_i), from
    its state of that round (pending until its next message says the server used it)."""
    hs = []
    for c in grid.contexts.values():
        key = next(
            k
            for k, v in ((PENDING, PENDING_VALUES), (STATE, STATE_VALUES))
            if k in c.state and int(c.state[v]["round"]) == last_applied
        )
        h, x_hat = (unpack(c.state[key][k]).astype(np.float64) for k in ("h_hat", "x_hat"))
        hs.append(h + s.algorithm.p / s.algorithm.client_lr * (x - x_hat))
    return hs


def test_control_variates_sum_to_zero_with_full_participation(tmp_path):
    s = scenario(rounds=8)
    grid = InProcessGrid(client_app, N)
    run_rounds(grid, s, tmp_path)
    x = np.load(tmp_path / "final_model.npy").astype(np.float64)
    hs = control_variates(grid, s, 8, x)
    assert np.abs(sum(hs)).max() <= 1e-4 * max(np.abs(h).max() for h in hs)
    assert max(np.abs(h).max() for h in hs) > 1e-3  # they are not all zero
    _, h_ref = numpy_proxskip(s, 8)  # and they are the reference's control variates
    for h, ref in zip(hs, h_ref, strict=True):
        np.testing.assert_allclose(h, ref, rtol=1e-3, atol=1e-4)


def test_gradskip_with_q_one_is_proxskip_exactly(tmp_path):
    launch(scenario("proxskip"), tmp_path / "p")
    launch(scenario("gradskip", q=1.0), tmp_path / "g")
    gradskip = read_metrics(tmp_path / "g")
    assert without_wall_clock(read_metrics(tmp_path / "p")) == without_wall_clock(gradskip)
    np.testing.assert_array_equal(
        np.load(tmp_path / "p/final_model.npy"), np.load(tmp_path / "g/final_model.npy")
    )


def test_gradskip_skips_gradients_but_keeps_converging(tmp_path):
    rounds = 40
    launch(scenario("proxskip", rounds=rounds), tmp_path / "p")
    launch(scenario("gradskip", rounds=rounds, q=[0.2, 1.0, 0.5, 1.0]), tmp_path / "g")
    p_rows, g_rows = read_metrics(tmp_path / "p"), read_metrics(tmp_path / "g")
    assert sum(r["grad_evals"] for r in g_rows) < 0.9 * sum(r["grad_evals"] for r in p_rows)
    start = p_rows[0]["dist_to_opt"]
    assert g_rows[-1]["dist_to_opt"] < 1e-3 * start


def test_gradskip_gradient_counts_match_the_theory(tmp_path):
    """Client i computes min(K, K_i) gradients a round, K_i ~ Geometric(1 - q_i): on average
    1 / (1 - q_i (1 - p)), and (1 - q_i^K) / (1 - q_i) given the round's shared K."""
    p, rounds = 0.1, 600
    s = scenario("gradskip", rounds=rounds, p=p, q="theory")
    launch(s, tmp_path)
    kappas = load_dataset(s.data, s.seed).meta["kappa"]
    q = [(1 - 1 / k) / (1 - 1 / max(kappas)) for k in kappas]
    ks = np.array([round_length(p, s.seed, r) for r in range(1, rounds + 1)])
    per_client = read_metrics(tmp_path, "clients.jsonl")
    assert len(per_client) == rounds * N
    for i in range(N):
        counts = [c["grad_evals"] for c in per_client if c["partition"] == i]
        if q[i] == 1.0:  # the ill-conditioned client computes like ProxSkip: every iteration
            assert counts == ks.tolist()
            continue
        given_k = np.mean((1 - q[i] ** ks) / (1 - q[i]))
        assert np.mean(counts) == pytest.approx(given_k, rel=0.05)
        # the unconditional expectation, up to the shared coin's sampling noise
        assert np.mean(counts) == pytest.approx(1 / (1 - q[i] * (1 - p)), rel=0.15)


def test_the_control_variate_takes_the_average_it_was_part_of():
    """h_i = h_hat_i + (x - x_hat_i) / tau when the average x of its last applied round
    arrives: 2 + (1 - 0) / 0.5 with gamma = 0.25, p = 0.5."""
    p = ProxSkipParams(name="proxskip", p=0.5, client_lr=0.25)
    c = ClientState(torch.full((1, 3), 2.0), torch.zeros(1, 3), torch.tensor([4]))
    down = Received(torch.ones(1, 3), {}, {}, 5, [1], 0)
    np.testing.assert_allclose(start_of_round(p, down, c).numpy(), 4.0)
    first = ProxSkip().client_init(p, down)  # before a client's first round: h = 0 exactly
    assert float(start_of_round(p, down, first).abs().sum()) == 0


def test_a_client_whose_reply_was_not_used_keeps_the_state_of_its_last_used_round():
    state = RecordDict()
    old = {"h_hat": pack(np.full(3, 1.0, np.float32)), "x_hat": pack(np.zeros(3, np.float32))}
    new = {"h_hat": pack(np.full(3, 7.0, np.float32)), "x_hat": pack(np.ones(3, np.float32))}
    state[STATE], state[STATE_VALUES] = ArrayRecord(old), ConfigRecord({"round": 3})
    state[PENDING], state[PENDING_VALUES] = ArrayRecord(new), ConfigRecord({"round": 4})
    kept = committed(state, ClientState, 3, "cpu")  # the server last used round 3
    assert kept.round == 3 and float(kept.h_hat[0]) == 1.0 and PENDING not in state
    state[PENDING], state[PENDING_VALUES] = ArrayRecord(new), ConfigRecord({"round": 4})
    used = committed(state, ClientState, 4, "cpu")  # round 4 was used: promoted
    assert used.round == 4 and float(used.h_hat[0]) == 7.0
    assert committed(RecordDict(), ClientState, 0, "cpu") is None  # never trained


@pytest.mark.parametrize("method", [{}, {"name": "gradskip", "q": [0.5, 1.0, 0.7, 1.0]}])
def test_void_rounds_keep_the_control_variates_summing_to_zero(tmp_path, method):
    """Also for GradSkip, whose h_hat differs from h within a round: after a void round a
    client continues from h_i of the last applied round, not from the void round's h_hat."""
    lossy = {"system": {"failures": {"vanish_p": 0.1, "raise_p": 0.05}, "timeout_s": 10.0}}
    s = load_scenario(scenario(rounds=30, **method).to_dict() | lossy | {"checkpoint_every": 10})
    grid = InProcessGrid(client_app, N)
    run_rounds(grid, s, tmp_path / "a")
    x = np.load(tmp_path / "a/final_model.npy").astype(np.float64)
    rows = read_metrics(tmp_path / "a")
    void = [r for r in rows if not r["updated"]]
    assert 0 < len(void) < len(rows)
    assert all(r["dropouts"] + r["failures"] > 0 for r in void)
    assert all(r["updated"] == (r["clients"] == N) for r in rows)
    assert rows[-1]["dist_to_opt"] < 0.1 * rows[0]["dist_to_opt"]
    hs = control_variates(grid, s, max(r["round"] for r in rows if r["updated"]), x)
    assert np.abs(sum(hs)).max() <= 1e-4 * max(np.abs(h).max() for h in hs)
    # resuming from the round-20 checkpoint (client states included) reproduces the run
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for name in ("summary.json", "final_model.npy"):
        (tmp_path / "b" / name).unlink()
    launch(s, tmp_path / "b", resume=True)
    np.testing.assert_array_equal(
        np.load(tmp_path / "a/final_model.npy"), np.load(tmp_path / "b/final_model.npy")
    )


def test_q_must_be_a_probability():
    from fedsim.config import ScenarioError

    with pytest.raises(
        ScenarioError, match=r"scenario.algorithm.q: \[0.5, 1.5, 1.0, 1.0\] must lie in"
    ):
        scenario("gradskip", q=[0.5, 1.5, 1.0, 1.0])


def test_theory_settings_come_from_the_problem_constants():
    s = scenario("gradskip", client_lr="1/L", p="1/sqrt(kappa)", q="theory")
    meta = load_dataset(s.data, s.seed).meta  # the generator's own L_i, mu_i
    kappa_max = max(meta["kappa"])
    assert s.algorithm.client_lr == pytest.approx(1 / max(meta["L"]), rel=1e-9)
    assert s.algorithm.p == pytest.approx(kappa_max**-0.5, rel=1e-9)
    expected = [(1 - 1 / k) / (1 - 1 / kappa_max) for k in meta["kappa"]]
    assert s.algorithm.q == pytest.approx(expected, rel=1e-9)


def test_theory_settings_need_a_strongly_convex_problem(tmp_path):
    raw = {
        "data": {"dataset": "digits", "num_clients": 3},
        "model": {"name": "mlp"},
        "algorithm": {"name": "proxskip", "client_lr": "1/L"},
    }
    with pytest.raises(ScenarioError, match=r"^scenario\.algorithm\.client_lr: '1/L' needs"):
        load_scenario(raw)
