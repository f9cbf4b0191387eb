"""`fedsim flower run`: a Flower App folder runs with Flower's semantics (run config fused
from its pyproject, node_config, Contexts kept), fedsim's [system] profiles act on its
messages as a real federation would, and bad input is one line and exit 2. The app is
tests/flower_fixture_app.py, written against Flower's API only; results are checked against
the closed form of Flower's FedAvg on it (each node adds p + 1 and weighs itself p + 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import fedsim
from fedsim.cli import main
from fedsim.heterogeneity import SystemConfig, failure_of

from .conftest import REPO

PYPROJECT = """
[project]
name = "fixture"
version = "1.0.0"

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "{module}:server"
clientapp = "{module}:client"

[tool.flwr.app.config]
num-nodes = 5
rounds = 3
fail-partition = -1
"""


def app(tmp_path: Path, module: str = "fixture_app", components: str = PYPROJECT) -> Path:
    """A Flower App folder holding the fixture app as `module`."""
    root = tmp_path / "app"
    root.mkdir()
    shutil.copy(REPO / "tests" / "flower_fixture_app.py", root / f"{module}.py")
    (root / "pyproject.toml").write_text(components.format(module=module))
    return root


def fedavg_steps(answering: list[list[int]]) -> float:
    """w after FedAvg rounds in which the nodes of each list answered (w + (p + 1), weight
    p + 1): the sum of sum (p+1)^2 / sum (p+1)."""
    return sum(sum((p + 1) ** 2 for p in s) / sum(p + 1 for p in s) for s in answering)


def test_the_app_runs_with_its_run_config_node_config_and_contexts(tmp_path):
    run = fedsim.run_flower_app(app(tmp_path, "fixture_a"), num_supernodes=5)
    assert run.run_config == {"num-nodes": 5, "rounds": 3, "fail-partition": -1}
    expected = 3 * fedavg_steps([list(range(5))])
    np.testing.assert_allclose(run.context.state["final"]["w"].numpy(), np.full(3, expected))
    assert run.context.state["train"]["calls"] == pytest.approx(3)  # each node's state kept


def test_a_run_config_override_reaches_every_client(tmp_path):
    """`--run-config` text as flwr parses it: partition 2 fails on purpose from its own
    Context's run config, and Flower's FedAvg goes on without it."""
    run = fedsim.run_flower_app(
        app(tmp_path, "fixture_b"), "fail-partition=2 rounds=2", num_supernodes=5
    )
    expected = 2 * fedavg_steps([[0, 1, 3, 4]])
    np.testing.assert_allclose(run.context.state["final"]["w"].numpy(), np.full(3, expected))


def test_dropouts_from_system_profiles_reach_the_apps_strategy(tmp_path):
    """30% of nodes vanish each round (a coin per node and round): they answer with the
    SuperLink's NODE_UNAVAILABLE error, FedAvg aggregates the others, the clock runs."""
    system = {"failures": {"vanish_p": 0.3}, "latency_s": 0.5}
    run = fedsim.run_flower_app(app(tmp_path, "fixture_c"), num_supernodes=5, system=system, seed=4)
    cfg = SystemConfig.model_validate(system)
    answering = [
        [p for p in range(5) if failure_of(cfg.failures, 4, r, p) != "vanish"] for r in (1, 2, 3)
    ]
    assert any(len(s) < 5 for s in answering)  # the seed makes some drop
    expected = fedavg_steps(answering)
    np.testing.assert_allclose(run.context.state["final"]["w"].numpy(), np.full(3, expected))
    trains = [e for e in run.exchanges if e["message_type"] == "train"]
    assert [e["round"] for e in trains] == [1, 2, 3]
    assert [e["unavailable"] for e in trains] == [5 - len(s) for s in answering]
    assert all(e["duration_s"] == pytest.approx(0.5, abs=0.01) for e in run.exchanges)
    assert run.sim_time_s == pytest.approx(sum(e["duration_s"] for e in run.exchanges))


def test_a_deadline_drops_the_slow_nodes_replies(tmp_path):
    """Node speeds 1..5 examples/s and num-examples p + 1: every node takes 1 s of work,
    but latencies differ; replies after the deadline never reach the strategy."""
    system = {"latency_s": [0.0, 0.0, 0.0, 5.0, 5.0], "policy": "deadline", "deadline_s": 2.0}
    system |= {"speed": [1.0, 2.0, 3.0, 4.0, 5.0]}
    run = fedsim.run_flower_app(app(tmp_path, "fixture_d"), num_supernodes=5, system=system)
    expected = 3 * fedavg_steps([[0, 1, 2]])
    np.testing.assert_allclose(run.context.state["final"]["w"].numpy(), np.full(3, expected))
    trains = [e for e in run.exchanges if e["message_type"] == "train"]
    assert all(e["late"] == 2 and e["replies"] == 3 for e in trains)
    assert all(e["duration_s"] == 2.0 for e in trains)


def test_workers_give_the_same_run_as_one_thread(tmp_path):
    root = app(tmp_path, "fixture_e")
    one = fedsim.run_flower_app(root, num_supernodes=5)
    four = fedsim.run_flower_app(root, num_supernodes=5, workers=4)
    assert np.array_equal(
        one.context.state["final"]["w"].numpy(), four.context.state["final"]["w"].numpy()
    )


def test_the_cli_prints_each_exchange_and_the_clock(tmp_path, capsys):
    root = app(tmp_path, "fixture_f")
    (tmp_path / "drop.toml").write_text("[system]\nfailures = { vanish_p = 0.3 }\n")
    args = ["flower", "run", str(root), "--federation-config", "num-supernodes=5"]
    assert main([*args, "--system", str(tmp_path / "drop.toml"), "--run-config", "rounds=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    assert [r["round"] for r in rows] == [1, 1, 2, 2]
    assert "5 SuperNodes" in lines[-1] and "simulated clock" in lines[-1]


BAD = {
    "not a folder": (None, "flower app: '{root}' is not a folder"),
    "no pyproject": (
        "",
        "flower app: '{root}' has no pyproject.toml (a Flower App declares itself there)",
    ),
    "no components": (
        '[tool.flwr.app]\npublisher = "x"\n',
        "flower app: '{root}': pyproject.toml has no [tool.flwr.app.components] serverapp and"
        ' clientapp (e.g. serverapp = "my_app.server_app:app")',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_folder_that_is_not_a_flower_app_is_one_line(case, tmp_path, capsys):
    pyproject, line = BAD[case]
    root = tmp_path / "notanapp"
    if pyproject is not None:
        root.mkdir()
        if pyproject:
            (root / "pyproject.toml").write_text(pyproject)
    assert main(["flower", "run", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedsim: error: {line.format(root=root)}"]


def test_components_that_fail_to_import_show_their_traceback_and_exit_2(tmp_path, capsys):
    root = app(tmp_path, "fixture_g")
    (root / "fixture_g.py").write_text("import math\nraise ImportError('no torch here')\n")
    assert main(["flower", "run", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "fedsim: error: flower app: serverapp 'fixture_g:server' cannot be imported:"
        " ImportError: no torch here"
    )
    assert any(str(root / "fixture_g.py") in x for x in err[:-1])  # the traceback first


def test_an_unknown_run_config_key_and_a_bad_system_are_one_line(tmp_path, capsys):
    root = app(tmp_path, "fixture_h")
    assert main(["flower", "run", str(root), "--run-config", "lr=0.1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "fedsim: error: --run-config: Key 'lr' is not present in the main dictionary"
        " (the app's [tool.flwr.app.config])"
    )
    (tmp_path / "s.toml").write_text('[system]\npolicy = "overcommit"\novercommit = 0.5\n')
    assert main(["flower", "run", str(root), "--system", str(tmp_path / "s.toml")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(
            "fedsim: error: system.policy: 'overcommit' chooses clients, and a Flower App's"
        )
    )


def test_a_raising_clientapp_is_logged_with_its_node_and_traceback(tmp_path, caplog):
    """As on Flower's engine: the error reply reaches the strategy (FedAvg goes on) and the
    traceback is logged."""
    run = fedsim.run_flower_app(app(tmp_path, "fixture_i"), "fail-partition=1", num_supernodes=5)
    assert "final" in run.context.state
    logged = [r.getMessage() for r in caplog.records if r.name == "fedsim"]
    assert any("raised" in m and "partition 1 fails on purpose" in m for m in logged)


def test_fedsim_run_on_a_flower_app_folder_points_to_flower_run(tmp_path, capsys):
    root = app(tmp_path, "fixture_j")
    assert main(["run", str(root)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fedsim: error: scenario: '{root}' is a folder with a pyproject.toml; a Flower App"
        f" runs with `fedsim flower run {root}`"
    )
