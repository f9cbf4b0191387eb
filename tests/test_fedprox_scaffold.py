"""FedProx and SCAFFOLD against float64 NumPy implementations of their rules (full gradients
on generated logistic regression), FedProx with mu = 0 being FedAvg exactly, and SCAFFOLD's
invariant sum_i c_i = N c with sampled cohorts and lost replies."""

from __future__ import annotations

import numpy as np
import pytest

import fedsim.runtime as runtime
from fedsim.checkpoint import load_checkpoint
from fedsim.messages import EXTRA
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.servers.evaluate import Evaluator
from fedsim.servers.nodes import sample_partitions

from .conftest import logreg_grad, logreg_parts, logreg_scenario, without_wall_clock

KAPPA = [5.0, 10.0, 20.0, 10.0, 40.0, 8.0]
N = len(KAPPA)


def scenario(algorithm: dict, rounds: int = 8, **over):
    alg = {"batch_size": 0, "client_lr": 0.3, **algorithm}
    return logreg_scenario(2, 6, 30, KAPPA, alg, rounds, checkpoint_every=1, **over)


def numpy_fedprox(s, rounds: int) -> np.ndarray:
    """w <- w - gamma (grad f_i(w) + mu (w - x)), H times; x <- x - eta_s mean_w (x - w_i)."""
    a, parts = s.algorithm, logreg_parts(s)
    x = Evaluator(s).initial_params().astype(np.float64)
    weights = np.array([len(part[1]) for part in parts], dtype=np.float64)
    for _ in range(rounds):
        deltas = []
        for part in parts:
            w = x.copy()
            for _ in range(a.local_steps):
                w = w - a.client_lr * (logreg_grad(part, w) + a.mu * (w - x))
            deltas.append(x - w)
        x = x - a.server_lr * np.tensordot(weights, deltas, 1) / weights.sum()
    return x


def test_fedprox_matches_its_update_rule(tmp_path):
    s = scenario({"name": "fedprox", "local_steps": 3, "mu": 0.5, "server_lr": 0.9})
    launch(s, tmp_path)
    x_ref = numpy_fedprox(s, 8)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), x_ref, rtol=1e-4, atol=1e-6)
    x0 = Evaluator(s).initial_params()
    assert np.abs(x_ref - x0).max() > 1e-2  # it moved, and the proximal term mattered:
    mu0 = numpy_fedprox(scenario({"name": "fedprox", "local_steps": 3, "mu": 0.0}), 8)
    assert np.abs(mu0 - x_ref).max() > 1e-3


def test_fedprox_with_mu_zero_is_fedavg_exactly(tmp_path):
    common = {"local_epochs": 2, "batch_size": 8}
    launch(scenario({"name": "fedprox", "mu": 0.0, **common}), tmp_path / "prox")
    launch(scenario({"name": "fedavg", **common}), tmp_path / "avg")
    assert without_wall_clock(read_metrics(tmp_path / "prox")) == without_wall_clock(
        read_metrics(tmp_path / "avg")
    )


def numpy_scaffold(s, rounds: int, used: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """SCAFFOLD's rules (Karimireddy et al. 2020, Algorithm 1) with the cohort each round
    actually used; a client whose reply was lost keeps its c_i."""
    a, parts = s.algorithm, logreg_parts(s)
    x = Evaluator(s).initial_params().astype(np.float64)
    c, ci = np.zeros_like(x), [np.zeros_like(x) for _ in parts]
    for r in range(1, rounds + 1):
        dy, dc = [], []
        for i in used[r]:
            y = x.copy()
            for _ in range(a.local_steps):
                y = y - a.client_lr * (logreg_grad(parts[i], y) - ci[i] + c)
            if a.option == "I":
                new = logreg_grad(parts[i], x)
            else:
                new = ci[i] - c + (x - y) / (a.local_steps * a.client_lr)
            dy.append(y - x)
            dc.append(new - ci[i])
            ci[i] = new
        if dy:
            x = x + a.server_lr * np.mean(dy, axis=0)
            c = c + np.sum(dc, axis=0) / N
    return x, c


def used_per_round(run_dir, rounds: int) -> dict[int, list[int]]:
    used = {r: [] for r in range(1, rounds + 1)}
    for row in read_metrics(run_dir, "clients.jsonl"):
        if row["fate"] == "arrived":
            used[row["round"]].append(row["partition"])
    return used


@pytest.mark.parametrize("option", ["I", "II"])
def test_scaffold_matches_its_update_rule_with_sampling_and_lost_replies(tmp_path, option):
    lossy = {"failures": {"vanish_p": 0.2}, "timeout_s": 10.0}
    s = scenario(
        {"name": "scaffold", "local_steps": 4, "option": option, "fraction": 0.5, "server_lr": 0.8},
        rounds=10,
        system=lossy,
    )
    launch(s, tmp_path)
    used = used_per_round(tmp_path, 10)
    assert any(0 < len(u) < 3 for u in used.values())  # some replies were lost
    assert {r: sorted(u) for r, u in used.items()} == {  # and the cohorts were sampled
        r: sorted(set(u) & set(sample_partitions(list(range(N)), 3, s.seed, r)))
        for r, u in used.items()
    }
    x_ref, c_ref = numpy_scaffold(s, 10, used)
    np.testing.assert_allclose(np.load(tmp_path / "final_model.npy"), x_ref, rtol=1e-4, atol=1e-6)
    meta, arrays = load_checkpoint(tmp_path, s.to_json())
    np.testing.assert_allclose(arrays["server/c"], c_ref, rtol=1e-4, atol=1e-6)


def test_scaffold_control_variates_sum_to_n_times_c(tmp_path):
    """sum_i c_i = N c after every round, whoever was sampled and whoever was lost."""
    lossy = {"failures": {"vanish_p": 0.2, "raise_p": 0.1}, "timeout_s": 10.0}
    s = scenario({"name": "scaffold", "fraction": 0.5, "batch_size": 8}, rounds=9, system=lossy)
    launch(s, tmp_path)
    meta, arrays = load_checkpoint(tmp_path, s.to_json())  # after round 9
    last_used = {int(k): v for k, v in meta["server"]["last_used"].items()}
    total = np.zeros_like(arrays["server/c"], dtype=np.float64)
    for pid, records in meta["clients"].items():
        pending = records.get("method-pending-values", {}).get("config", {})
        key = (
            "method-pending" if pending.get("round") == last_used.get(int(pid)) else "method-state"
        )
        if f"client/{pid}/{key}/c" in arrays:  # a client never used holds c_i = 0
            total += arrays[f"client/{pid}/{key}/c"]
    assert np.abs(arrays["server/c"]).max() > 1e-3
    np.testing.assert_allclose(total, N * arrays["server/c"], rtol=1e-4, atol=1e-5)


def test_side_arrays_travel_only_with_a_method_that_has_them(tmp_path, monkeypatch):
    """A record is one more object for a deployment to push and pull: FedAvg's messages and
    replies have no `extra` record; SCAFFOLD's carry its control variates both ways."""

    class Recording(runtime.InProcessGrid):
        traffic: list = []

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self.traffic += [m for m in messages if m.metadata.message_type == "train"]
            for reply in super().send_and_receive(messages, timeout=timeout):
                if reply.metadata.message_type == "train":
                    self.traffic.append(reply)
                yield reply

    monkeypatch.setattr(runtime, "InProcessGrid", Recording)
    for name, down, up in (("fedavg", set(), set()), ("scaffold", {"c"}, {"dc"})):
        Recording.traffic = []
        launch(scenario({"name": name, "local_steps": 2}, rounds=2), tmp_path / name)
        assert len(Recording.traffic) == 2 * 2 * N  # every client, both ways, two rounds
        for msg in Recording.traffic:
            sides = up if msg.metadata.reply_to_message_id else down
            assert (EXTRA in msg.content) == bool(sides)
            assert set(msg.content.get(EXTRA, {}).keys()) == sides
