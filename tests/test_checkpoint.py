"""Checkpoints: a run killed with SIGKILL and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
from flwr.app import MetricRecord

from fedsim.cli import main
from fedsim.clients.app import app as client_app
from fedsim.results import CHECKPOINT, load_checkpoint, read_metrics, save_checkpoint
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.experiment import client_states

from .conftest import REPO

ARGS = ["--set", "rounds=30", "--set", "checkpoint_every=3", "--set", "data.num_clients=10"]


def without_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    scenario = str(REPO / "scenarios/quickstart.toml")
    assert main(["run", scenario, "--out", str(tmp_path / "whole"), *ARGS]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedsim", "run", scenario, "--out", str(killed), *ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= 8:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    done = load_checkpoint(killed)["round"]
    assert 6 <= done < 30 and done % 3 == 0

    assert main(["run", "--resume", str(killed)]) == 0
    assert without_wall(read_metrics(killed)) == without_wall(read_metrics(tmp_path / "whole"))
    np.testing.assert_array_equal(
        np.load(killed / "final_model.npy"), np.load(tmp_path / "whole/final_model.npy")
    )


def test_checkpoint_writes_are_atomic_and_keep_client_states(tmp_path):
    grid = InProcessGrid(client_app, 3)
    partitions = {c.node_config["partition-id"]: n for n, c in grid.contexts.items()}
    for pid, state in client_states(grid, partitions).items():
        state["memory"] = MetricRecord({"pid": pid})
    save_checkpoint(tmp_path, {"round": 1, "clients": client_states(grid, partitions)})
    save_checkpoint(tmp_path, {"round": 2, "clients": client_states(grid, partitions)})
    ck = load_checkpoint(tmp_path)
    assert ck["round"] == 2 and sorted(tmp_path.iterdir()) == [tmp_path / CHECKPOINT]
    assert {pid: s["memory"]["pid"] for pid, s in ck["clients"].items()} == {0: 0, 1: 1, 2: 2}


def test_resume_of_a_non_run_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
