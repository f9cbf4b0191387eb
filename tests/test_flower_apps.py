"""Flower Apps written only against Flower's public API (tests/flower_apps/) give on
`fedsim.run_flower_app` what they give on Flower's own Simulation Engine (Ray): every array and
metric the ServerApp keeps in its Context.state. And fedsim runs them deterministically.

Tolerances: arrays to atol ATOL * max(1, max |x|), rtol 0; float metrics to rtol RTOL (the
two runtimes sum the clients' float32 updates and float metrics in a different order: Ray
answers in the order the ClientApps finish, fedsim in the order the messages were sent);
integers, strings and booleans exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, RecordDict

import fedsim

from .flower_reference import run_on_flower

APPS_DIR = Path(__file__).parent / "flower_apps"
NUM_SUPERNODES = 10
ATOL = 1e-6
RTOL = 1e-6
# each app's run-config overrides in the comparison (the fused config must match too);
# "min-nodes": the ServerApp waits for all SuperNodes, which Flower's Simulation Engine
# registers while the ServerApp is already running (fedsim's are there from the start)
ALL = {"min-nodes": NUM_SUPERNODES}
OVERRIDES = {
    "pytorch_fedavg": ALL | {"local-epochs": 2},
    "numpy_custom_strategy": ALL | {"trim-fraction": 0.1},
    "query_state": ALL | {"num-server-rounds": 4},
    "run_config_clients": ALL | {"target-offset": 3.0, "client.local-steps": 3},
}


def assert_same_state(got: RecordDict, want: RecordDict) -> None:
    """Every record of `want` is in `got` with the same keys, and equal values (see above)."""
    assert sorted(got.keys()) == sorted(want.keys())
    for name, record in want.items():
        other = got[name]
        assert type(other) is type(record), name
        assert list(other.keys()) == list(record.keys()), name
        for key, value in record.items():
            where = f"{name}[{key!r}]"
            if isinstance(record, ArrayRecord):
                a, b = other[key].numpy(), value.numpy()
                assert (a.dtype, a.shape) == (b.dtype, b.shape), where
                scale = max(1.0, float(np.abs(b).max(initial=0.0)))
                np.testing.assert_allclose(a, b, rtol=0, atol=ATOL * scale, err_msg=where)
            else:
                assert_same_value(other[key], value, where)


def assert_same_value(got, want, where: str) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_value(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float), where
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12, err_msg=where)
    else:  # int, str, bool, bytes
        assert type(got) is type(want) and got == want, where


def assert_identical_state(got: RecordDict, want: RecordDict) -> None:
    """Bit for bit: arrays' bytes and every value."""
    assert sorted(got.keys()) == sorted(want.keys())
    for name, record in want.items():
        if isinstance(record, ArrayRecord):
            assert {k: a.data for k, a in got[name].items()} == {
                k: a.data for k, a in record.items()
            }, name
        else:
            assert dict(got[name]) == dict(record), name


@pytest.fixture(scope="module", params=sorted(OVERRIDES))
def on_flower(request):
    """(app name, the ServerApp's Context after a run on Flower's Simulation Engine)."""
    name = request.param
    return name, run_on_flower(APPS_DIR / name, OVERRIDES[name], NUM_SUPERNODES)


@pytest.mark.slow
def test_fedsim_gives_what_flower_gives(on_flower):
    name, want = on_flower
    run = fedsim.run_flower_app(APPS_DIR / name, OVERRIDES[name], NUM_SUPERNODES)
    assert dict(run.context.run_config) == dict(want.run_config)
    assert len(want.state) > 0
    assert_same_state(run.context.state, want.state)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_fedsim_runs_an_app_deterministically(name):
    first = fedsim.run_flower_app(APPS_DIR / name, OVERRIDES[name], NUM_SUPERNODES)
    again = fedsim.run_flower_app(APPS_DIR / name, OVERRIDES[name], NUM_SUPERNODES)
    assert len(first.context.state) > 0
    assert_identical_state(again.context.state, first.context.state)


def test_query_state_keeps_each_contexts_state_across_rounds():
    run = fedsim.run_flower_app(APPS_DIR / "query_state", {"num-server-rounds": 3}, 4)
    state = run.context.state
    assert dict(state["server"]) == {"sent": 24, "replies": 24, "rounds": 3}
    for rnd in (1, 2, 3):  # every ClientApp counted its train and query messages
        row = state[f"query-round-{rnd}"]
        assert row["train-calls"] == row["query-calls"] == [rnd] * 4
        assert row["count"] == 25 * 4 * rnd
    assert int(state["histogram"]["counts"].numpy().sum()) == 25 * 4 * 3


def expected_w(cfg: dict, n: int) -> np.ndarray:
    """run_config_clients' closed form: node p pulls w to offset + p/n + (0..dim-1) by
    `client.local-steps` steps of size `client.lr`; FedAvg weighs p by p+1 ("examples")."""
    p = np.arange(n)
    weights = p + 1.0 if cfg["weighting"] == "examples" else np.ones(n)
    targets = cfg["target-offset"] + p[:, None] / n + np.arange(cfg["dim"])[None, :]
    c = (1.0 - cfg["client.lr"]) ** cfg["client.local-steps"]
    return (weights @ targets / weights.sum()) * (1.0 - c ** cfg["num-server-rounds"])


def test_run_config_overrides_change_what_clients_do():
    app = APPS_DIR / "run_config_clients"
    default = fedsim.run_flower_app(app, None, 6)
    override = {"target-offset": 5.0, "client.lr": 0.5, "weighting": "uniform"}
    changed = fedsim.run_flower_app(app, override, 6)
    cli = fedsim.run_flower_app(app, 'target-offset=5.0 client.lr=0.5 weighting="uniform"', 6)
    base = {
        "num-server-rounds": 3,
        "min-nodes": 2,
        "dim": 4,
        "target-offset": 1.0,
        "weighting": "examples",
    }
    base |= {"client.lr": 0.25, "client.local-steps": 2}
    assert dict(default.context.state["run-config"]) == base
    assert dict(changed.context.state["run-config"]) == base | override
    for run, cfg in ((default, base), (changed, base | override)):
        w = run.context.state["final"]["w"].numpy()
        np.testing.assert_allclose(w, expected_w(cfg, 6), rtol=0, atol=1e-12)
        assert run.context.state["train-round-1"]["lr"] == pytest.approx(cfg["client.lr"])
    assert_identical_state(cli.context.state, changed.context.state)
