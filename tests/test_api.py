"""The Python API: the same rows as the CLI, typed errors carrying the CLI's line, a result
whose model reproduces the run's own evaluation, and the docs' notebook executed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fedsim
from fedsim.cli import main
from fedsim.data import load_dataset
from fedsim.models import predict
from fedsim.results import read_metrics
from tests.conftest import REPO, small_scenario, without_wall_clock


def same_rows(a: list[dict], b: list[dict]) -> None:
    assert without_wall_clock(a) == without_wall_clock(b)


def test_python_and_cli_give_the_same_rows_from_a_path_a_dict_and_a_scenario(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(small_scenario(seed=5).to_toml())
    cli = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", str(path), "--out", str(tmp_path / "cli")]
        + ["--set", "rounds=2", "--set", "algorithm.client_lr=0.1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    cli_rows = read_metrics(tmp_path / "cli")
    assert len(cli_rows) == 2

    by_keywords = fedsim.run(path, out=tmp_path / "kw", rounds=2, algorithm__client_lr=0.1)
    same_rows(by_keywords.rows, cli_rows)
    by_dict = fedsim.run(
        small_scenario(seed=5).to_dict(),
        out=tmp_path / "dict",
        overrides={"rounds": 2, "algorithm.client_lr": 0.1},
    )
    same_rows(by_dict.rows, cli_rows)
    by_scenario = fedsim.run(
        small_scenario(seed=5),
        out=tmp_path / "obj",
        overrides=["rounds=2", "algorithm.client_lr=0.1"],
    )
    same_rows(by_scenario.rows, cli_rows)
    assert by_scenario.metrics["eval_accuracy"].tolist() == [r["eval_accuracy"] for r in cli_rows]
    assert by_scenario.summary == json.loads((tmp_path / "obj" / "summary.json").read_text())


def test_the_results_model_reproduces_the_runs_own_evaluation(tmp_path):
    result = fedsim.run(small_scenario(rounds=2), out=tmp_path / "run", quiet=True)
    x = result.model()
    assert x.dtype == torch.float32
    assert np.array_equal(x.numpy(), np.load(tmp_path / "run" / "final_model.npy"))
    module = result.module()
    s = result.scenario
    ds = load_dataset(s.data, s.seed)
    with torch.no_grad():
        out = module(torch.as_tensor(ds.x_test))
    accuracy = float((predict(out) == torch.as_tensor(ds.y_test)).float().mean())
    assert accuracy == result.summary["final"]["eval_accuracy"]
    assert set(module.state_dict()) == {n for n, _ in module.named_parameters()}
    clients = result.clients
    assert set(clients["round"]) == {1, 2} and (clients["fate"] == "arrived").all()


@pytest.mark.parametrize(
    ("over", "line"),
    [
        (["data.alpha=-1"], "scenario.data.alpha: -1 is invalid (input should be greater than 0)"),
        (["algorithm.colour=1"], None),
        (["rounds=0"], None),
    ],
)
def test_bad_input_raises_scenario_error_with_the_clis_line(tmp_path, capsys, over, line):
    path = tmp_path / "s.toml"
    path.write_text(small_scenario().to_toml())
    args = ["run", str(path), "--out", str(tmp_path / "c")]
    assert main(args + [a for o in over for a in ("--set", o)]) == 2
    with pytest.raises(fedsim.ScenarioError) as err:
        fedsim.run(path, out=tmp_path / "p", overrides=over)
    assert capsys.readouterr().err.strip() == f"fedsim: error: {err.value}"
    assert "\n" not in str(err.value)
    if line:
        assert str(err.value) == line
    assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()


def test_the_notebook_example_runs(tmp_path):
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "python_api" / "notebook.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: scenario.data.alpha: -1.0 is invalid" in done.stdout
    assert (tmp_path / "runs" / "notebook" / "lr" / "report.html").is_file()
    assert (tmp_path / "runs" / "notebook" / "fedprox" / "summary.json").is_file()


def test_every_public_name_resolves():
    for name in fedsim.__all__:
        assert getattr(fedsim, name) is not None, name
    assert set(fedsim.__all__) == set(fedsim._FROM)
