"""Sweeps: grid expansion, validation before running, CSV = summaries, failures, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fedsim.checkpoint import CHECKPOINT
from fedsim.cli import main
from fedsim.config import ScenarioError
from fedsim.report import write_report
from fedsim.results import CONFIG
from fedsim.sweeps import Axis, grid, plan, read_sweep, run_sweep

from .conftest import REPO

BASE = """
name = "tiny"
rounds = 2
checkpoint_every = 0
[data]
num_clients = 4
[model]
hidden = [8]
[algorithm]
name = "fedavg"
batch_size = 32
"""


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def sweep_file(tmp_path, axes: str, seeds="[0, 1]", extra="") -> str:
    (tmp_path / "base.toml").write_text(BASE)
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\nbase = "base.toml"\nseeds = {seeds}\n{extra}\n{axes}')
    return str(path)


def test_axes_are_crossed_and_keys_within_an_axis_zipped():
    a = Axis(key="data.alpha", values=[0.1, 1.0])
    b = Axis(
        keys=["algorithm.name", "algorithm.client_lr"], values=[["fedavg", 0.3], ["local_sgd", 0.1]]
    )
    points = grid([a, b])
    assert points == [
        {"data.alpha": 0.1, "algorithm.name": "fedavg", "algorithm.client_lr": 0.3},
        {"data.alpha": 0.1, "algorithm.name": "local_sgd", "algorithm.client_lr": 0.1},
        {"data.alpha": 1.0, "algorithm.name": "fedavg", "algorithm.client_lr": 0.3},
        {"data.alpha": 1.0, "algorithm.name": "local_sgd", "algorithm.client_lr": 0.1},
    ]
    assert grid([]) == [{}]
    with pytest.raises(ValueError):
        Axis(keys=["a", "b"], values=[[1, 2], [3]])


def test_a_bad_key_or_value_fails_the_whole_sweep_before_anything_runs(tmp_path):
    axes = '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1, -1.0]'
    with pytest.raises(
        ScenarioError,
        match=r"sweep point 1 \(algorithm.client_lr=-1.0\): "
        r"scenario.algorithm.client_lr: -1.0",
    ):
        run_sweep(sweep_file(tmp_path, axes), tmp_path / "out")
    axes = '[[axes]]\nkey = "algorithm.colour"\nvalues = [1]'
    with pytest.raises(
        ScenarioError, match="sweep point 0.*scenario.algorithm.colour: unknown key"
    ):
        run_sweep(sweep_file(tmp_path, axes), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_matches_summaries_and_a_failed_point_does_not_stop_the_others(tmp_path):
    # every point validates, but point 1's runs find a torn checkpoint of an earlier sweep
    # to resume from, so they fail at run time
    axes = '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1, 0.2]'
    extra = 'target = { metric = "eval_accuracy", value = 0.0 }'
    path = sweep_file(tmp_path, axes, extra=extra)
    out = tmp_path / "out"
    for r in plan(*read_sweep(path)):
        if r.point == 1:
            r.directory(out).mkdir(parents=True)
            (r.directory(out) / CONFIG).write_text(r.scenario.to_toml())
            (r.directory(out) / CHECKPOINT).write_bytes(b"torn")
    assert main(["sweep", path, "--out", str(out), "--jobs", "2"]) == 0
    rows = read_csv(out / "sweep.csv")
    assert [(r["point"], r["seed"]) for r in rows] == [
        ("0", "0"),
        ("0", "1"),
        ("1", "0"),
        ("1", "1"),
    ]
    for r in rows[:2]:
        summary = json.loads((out / f"points/000/seed{r['seed']}/summary.json").read_text())
        assert r["status"] == "ok"
        assert float(r["final_eval_accuracy"]) == summary["final"]["eval_accuracy"]
        assert int(r["total_bytes_up"]) == summary["total_bytes_up"]
        assert float(r["sim_time_s"]) == summary["sim_time_s"]
        assert r["rounds_to_target"] == "1"  # a target of 0 is reached at once
    for r in rows[2:]:
        assert r["status"].startswith("failed: fedsim.checkpoint.CheckpointError: resume:")
    report = (out / "report.md").read_text()
    assert "Failed runs:" in report and "point 1 seed 0" in report
    assert "| 0 | 0.1 | 2/2 |" in report and "| 1 | 0.2 | 0/2 |" in report


def test_a_killed_sweep_resumes_and_runs_only_what_is_missing(tmp_path):
    axes = '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1, 0.2, 0.3]'
    path = sweep_file(tmp_path, axes, seeds="[0, 1]")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fedsim", "sweep", path, "--out", str(out), "--jobs", "1"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("points/*/*/summary.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("points/*/*/summary.json")}
    assert 2 <= len(done) < 6
    runs = run_sweep(path, out, jobs=1)
    after = {p: p.stat().st_mtime_ns for p in out.glob("points/*/*/summary.json")}
    assert len(runs) == len(after) == 6
    assert all(after[p] == t for p, t in done.items())  # completed runs were not redone
    write_report(out)
    assert sum(1 for r in read_csv(out / "sweep.csv") if r["status"] == "ok") == 6


def test_a_changed_sweep_is_refused_rather_than_served_stale_results(tmp_path):
    axes = '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1]'
    out = tmp_path / "out"
    run_sweep(sweep_file(tmp_path, axes, seeds="[0]"), out, jobs=1)
    changed = sweep_file(tmp_path, axes.replace("0.1", "0.2"), seeds="[0]")
    before = (out / "points/000/seed0/summary.json").read_text()
    with pytest.raises(ScenarioError, match=r"^sweep point 0 \(algorithm.client_lr=0.2\) seed 0"):
        run_sweep(changed, out, jobs=1)
    assert (out / "points/000/seed0/summary.json").read_text() == before  # nothing touched


def test_a_sweep_in_this_process_keeps_its_torch_threads(tmp_path):
    # a sweep in the caller's process used to set torch's threads to every core and leave
    # them there: two pytest workers, or a user's own setting, then oversubscribed the cores
    before = torch.get_num_threads()
    torch.set_num_threads(3 if before != 3 else 2)
    want = torch.get_num_threads()
    try:
        axes = '[[axes]]\nkey = "algorithm.client_lr"\nvalues = [0.1]'
        run_sweep(sweep_file(tmp_path, axes, seeds="[0]"), tmp_path / "out", jobs=1)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
