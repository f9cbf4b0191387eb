"""Same scenario and seed, same model: in-process runtime vs Flower's Simulation Engine (Ray),
also on a Ray cluster started apart (`simulation.address`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.results import read_metrics
from fedsim.runtime import launch

from .conftest import REPO, ray_cluster, small_scenario


@pytest.mark.slow
def test_inprocess_and_simulation_give_the_same_model(ray_head, tmp_path):
    # client sampling (fraction 0.5) checks the partition discovery too, and an injected
    # raise checks that both engines turn a failing ClientApp into an error reply (a local
    # Ray start is the default path of tests/test_checkpoint.py and test_split_learning.py)
    base = dict(rounds=3, algorithm__fraction=0.5, system__failures={"raise_p": 0.3})
    launch(small_scenario(**base), tmp_path / "inprocess")
    cluster = dict(runtime="simulation", simulation__address=ray_head[0])
    launch(small_scenario(**base, **cluster), tmp_path / "simulation")
    a = np.load(tmp_path / "inprocess/final_model.npy")
    b = np.load(tmp_path / "simulation/final_model.npy")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert np.abs(a - small_scenario_initial(base)).max() > 1e-3  # the model did move
    rows_a, rows_b = read_metrics(tmp_path / "inprocess"), read_metrics(tmp_path / "simulation")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert (ra["bytes_up"], ra["grad_evals"], ra["clients"]) == (
            rb["bytes_up"],
            rb["grad_evals"],
            rb["clients"],
        )


def small_scenario_initial(base: dict) -> np.ndarray:
    from fedsim.servers.evaluate import Evaluator

    return Evaluator(small_scenario(**base)).initial_params()


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "proxskip", "p": 0.5, "client_lr": 0.05, "batch_size": 16},
        {"name": "gradskip", "p": 0.5, "client_lr": 0.05, "batch_size": 16, "q": 0.6},
        {
            "name": "scaled_sgd",
            "preconditioner": "adam",
            "local_steps": 3,
            "client_lr": 0.01,
            "alpha": 0.1,
        },
        {
            "name": "gradskip_plus",
            "p": 0.5,
            "client_lr": 0.05,
            "q": 0.7,
            "comm_density": 0.5,
            "skip_density": 0.5,
            "regularizer": "l1",
            "reg": 0.01,
        },
        {"name": "signum_mv", "server_lr": 0.01, "fraction": 0.7},
        {"name": "ef_signsgd", "client_lr": 0.05},
        {
            "name": "local_sgd",
            "local_steps": 2,
            "batch_size": 16,
            "uplink": "topk:0.05",
            "error_feedback": True,
        },
        {
            "name": "fedavg",
            "batch_size": 16,
            "privacy": {"mechanism": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
        },
        {"name": "fedprox", "mu": 0.5, "batch_size": 16, "fraction": 0.5},
        {"name": "scaffold", "local_steps": 3, "batch_size": 16, "fraction": 0.5},
    ],
    ids=lambda a: a["name"],
)
def test_stateful_methods_give_the_same_model_on_both_engines(ray_head, tmp_path, algorithm):
    """Every method with its own state or round settings, on one Ray cluster per test
    worker (`simulation.address`): a Ray start per method would add ~7 s each."""
    private = algorithm.pop("privacy", None)
    base = dict(rounds=3, algorithm=algorithm) | ({"privacy": private} if private else {})
    launch(small_scenario(**base), tmp_path / "inprocess")
    cluster = dict(runtime="simulation", simulation__address=ray_head[0])
    launch(small_scenario(**base, **cluster), tmp_path / "simulation")
    np.testing.assert_allclose(
        np.load(tmp_path / "inprocess/final_model.npy"),
        np.load(tmp_path / "simulation/final_model.npy"),
        rtol=0,
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def ray_head():
    """A running Ray cluster of one head node, for this module's tests (conftest.ray_cluster)."""
    with ray_cluster() as head:
        yield head


@pytest.mark.slow
def test_simulation_attaches_to_a_running_ray_cluster(ray_head, tmp_path):
    address, temp = ray_head
    drivers = lambda: len(list(temp.glob("session_*/logs/python-core-driver-*")))  # noqa: E731
    before = drivers()
    base = dict(rounds=2, data__num_clients=3)
    launch(small_scenario(**base), tmp_path / "inprocess")
    launch(
        small_scenario(**base, runtime="simulation", simulation__address=address),
        tmp_path / "cluster",
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "inprocess/final_model.npy"),
        np.load(tmp_path / "cluster/final_model.npy"),
        rtol=0,
        atol=1e-6,
    )
    assert drivers() > before  # the run was a driver of that cluster, not of a Ray of its own


@pytest.mark.slow
def test_a_plugin_reaches_the_workers_of_an_attached_cluster(ray_head, tmp_path):
    """Ray workers started apart (another working directory, nothing of the plug-in on their
    path) import the plug-in package from the source the run carries."""
    demo = REPO / "tests" / "plugins"
    base = {"data__num_clients": 2, "rounds": 2}
    launch(plugin_scenario(demo / "demo.toml", **base), tmp_path / "inprocess")
    cluster = dict(runtime="simulation", simulation__address=ray_head[0])
    launch(plugin_scenario(demo / "demo.toml", **base, **cluster), tmp_path / "cluster")
    np.testing.assert_allclose(
        np.load(tmp_path / "inprocess/final_model.npy"),
        np.load(tmp_path / "cluster/final_model.npy"),
        rtol=0,
        atol=1e-6,
    )


def plugin_scenario(path: Path, **over):
    from fedsim.config import load_scenario

    return load_scenario(path, values={k.replace("__", "."): v for k, v in over.items()})
