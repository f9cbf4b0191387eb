"""Trackers read back with their own readers: TensorBoard's event accumulator and MLflow's
client give the values of metrics.jsonl; a sweep's points are runs grouped by the sweep; a
resumed run continues its MLflow run; a tracker that is not installed is exit 2."""

from __future__ import annotations

import importlib.util
import math

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fedsim
from fedsim.cli import main
from fedsim.results import read_metrics
from fedsim.tracking import flatten, scalars
from tests.conftest import REPO, small_scenario


def tracked(tmp_path, **over):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = small_scenario(**over)
    result = fedsim.run(
        s,
        out=tmp_path / "run",
        quiet=True,
        tracking={"backends": ["tensorboard", "mlflow"], "mlflow_uri": uri},
    )
    return result, MlflowClient(uri)


def test_tensorboard_and_mlflow_hold_every_metric_of_every_round(tmp_path):
    result, client = tracked(tmp_path, rounds=4)
    rows = read_metrics(result.run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {k for r in rows for k in scalars(r)}
    assert tags == expected and {"eval_accuracy", "train_loss", "bytes_up"} <= tags
    for key in expected:
        got = {e.step: e.value for e in events.Scalars(key)}
        want = {r["round"]: float(r[key]) for r in rows if key in scalars(r)}
        assert got.keys() == want.keys()
        for step, value in want.items():  # TensorBoard stores float32
            assert math.isclose(got[step], value, rel_tol=1e-6, abs_tol=1e-30), (key, step)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert 'algorithm.name = "fedavg"' in config and "data.num_clients = 6" in config

    (run,) = client.search_runs([client.get_experiment_by_name("small").experiment_id])
    assert run.info.status == "FINISHED"
    params = {k: str(v) for k, v in flatten(result.scenario.to_dict()).items()}
    assert run.data.params == params
    for key in expected:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {r["round"]: float(r[key]) for r in rows}, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.jsonl", "summary.json", "config.toml", "clients.jsonl"} <= artifacts
    assert (
        tmp_path / "mlruns" / "small" / run.info.run_id / "artifacts" / "summary.json"
    ).is_file()


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    result, client = tracked(tmp_path, rounds=4, checkpoint_every=3)
    first = client.search_runs([client.get_experiment_by_name("small").experiment_id])
    (result.run_dir / "summary.json").unlink()
    resumed = fedsim.resume(result.run_dir, quiet=True)  # from round 3: round 4 runs again
    runs = client.search_runs([client.get_experiment_by_name("small").experiment_id])
    assert [r.info.run_id for r in runs] == [first[0].info.run_id]
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "eval_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 4]  # round 4 logged by each launch
    last = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    assert last == {r["round"]: r["eval_accuracy"] for r in resumed.rows}


def test_a_sweeps_points_are_runs_grouped_by_the_sweep(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text(small_scenario(rounds=2).to_toml())
    sweep = tmp_path / "sweep.toml"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep.write_text(
        'name = "lr"\nbase = "base.toml"\nseeds = [0, 1]\n'
        f'[tracking]\nmlflow_uri = "{uri}"\n'
        '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1, 0.3]\n'
    )
    assert (
        main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "-q", "--track", "mlflow"]) == 0
    )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lr").experiment_id])
    assert sorted((r.data.tags["point"], r.data.tags["seed"]) for r in runs) == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    for r in runs:
        assert r.data.tags["sweep"] == "lr" and r.info.status == "FINISHED"
        run_dir = (
            tmp_path / "out" / "points" / f"00{r.data.tags['point']}" / f"seed{r.data.tags['seed']}"
        )
        rows = read_metrics(run_dir)
        history = {m.step: m.value for m in client.get_metric_history(r.info.run_id, "train_loss")}
        assert history == {row["round"]: row["train_loss"] for row in rows}
        assert r.data.params["algorithm.client_lr"] == str([0.1, 0.3][int(r.data.tags["point"])])


def test_a_tracker_that_is_not_installed_is_exit_2_naming_the_extra(tmp_path, capsys):
    assert importlib.util.find_spec("wandb") is None  # the lock leaves W&B out
    out = tmp_path / "run"
    s = tmp_path / "s.toml"
    s.write_text(small_scenario().to_toml())
    assert main(["run", str(s), "--out", str(out), "--track", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fedsim: error: scenario.tracking.backends: 'wandb' is not installed"
        " (allowed: install it with pip install 'fedsim-flwr[wandb]')"
    )
    assert not out.exists()
    with pytest.raises(fedsim.ScenarioError, match="'nope' is not one of|should be"):
        fedsim.run(s, out=out, tracking__backends=["nope"])
    with pytest.raises(fedsim.ScenarioError, match=r"^--track: \['nope'\] is not a list of"):
        fedsim.sweep(REPO / "scenarios" / "demo_sweep.toml", out=out, track=["nope"])
    assert not out.exists()
