"""Checkpoints: a run killed with SIGKILL and resumed ends exactly like an uninterrupted one;
checkpoints hold arrays and JSON only, and a corrupted or foreign one is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.checkpoint import (
    CHECKPOINT,
    load_checkpoint,
    records_from_parts,
    records_to_parts,
    save_checkpoint,
)
from fedsim.cli import main
from fedsim.codecs import pack, unpack
from fedsim.config import load_scenario
from fedsim.results import CONFIG, create_run_dir, read_metrics

from .conftest import REPO, small_scenario, without_wall_clock

ARGS = ["--set", "rounds=30", "--set", "checkpoint_every=3", "--set", "data.num_clients=10"]


def kill_resume_and_compare(tmp_path, args: list[str], after_rows: int) -> int:
    """Run the quickstart with `args` whole; run it again, SIGKILL it (and every process it
    started) once `after_rows` rows are written, resume it; the resumed run must end with
    the whole run's rows and model. Returns the round the resume started from."""
    scenario = str(REPO / "scenarios/quickstart.toml")
    assert main(["run", scenario, "--out", str(tmp_path / "whole"), *args]) == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "fedsim", "run", scenario, "--out", str(killed), *args]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = killed / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().count("\n") >= after_rows:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    done = load_checkpoint(killed, load_scenario(killed / CONFIG).to_json())[0]["round"]
    assert main(["run", "--resume", str(killed)]) == 0
    whole = read_metrics(tmp_path / "whole")
    assert without_wall_clock(read_metrics(killed)) == without_wall_clock(whole)
    np.testing.assert_array_equal(
        np.load(killed / "final_model.npy"), np.load(tmp_path / "whole/final_model.npy")
    )
    return done


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    done = kill_resume_and_compare(tmp_path, ARGS, after_rows=8)
    assert 6 <= done < 30 and done % 3 == 0


@pytest.mark.slow
def test_sigkill_then_resume_of_a_stateful_method_on_the_simulation_engine(tmp_path):
    """SCAFFOLD's control variates live on the clients; on Flower's Ray engine they reach the
    checkpoint as query.state messages and come back as query.restore."""
    scaffold = 'algorithm={name="scaffold", local_steps=3, batch_size=16, fraction=0.5}'
    args = ["--runtime", "simulation", "--set", scaffold, "--set", "rounds=8"]
    args += ["--set", "checkpoint_every=2", "--set", "data.num_clients=6"]
    done = kill_resume_and_compare(tmp_path, args, after_rows=5)
    assert 4 <= done < 8


def test_checkpoint_writes_are_atomic_and_keep_client_states(tmp_path):
    state = RecordDict()
    state["memory"] = ArrayRecord({"e": pack(np.arange(4, dtype=np.float32))})
    state["count"] = ConfigRecord({"steps": 7, "name": "x"})
    state["m"] = MetricRecord({"loss": 0.5})
    for rnd in (1, 2):
        doc, arrays = records_to_parts("client/3", state)
        save_checkpoint(tmp_path, "{}", {"round": rnd, "clients": {"3": doc}}, arrays)
    meta, arrays = load_checkpoint(tmp_path, "{}")
    assert meta["round"] == 2 and sorted(tmp_path.iterdir()) == [tmp_path / CHECKPOINT]
    back = records_from_parts("client/3", meta["clients"]["3"], arrays)
    np.testing.assert_array_equal(unpack(back["memory"]["e"]), np.arange(4, dtype=np.float32))
    assert dict(back["count"]) == {"steps": 7, "name": "x"} and dict(back["m"]) == {"loss": 0.5}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b""), "is not a readable checkpoint"),
        (lambda p: p.write_bytes(p.read_bytes()[:300]), "is not a readable checkpoint"),
        (lambda p: np.savez(p, x=np.array([{"code": 1}], dtype=object)), "not a readable"),
        (lambda p: save_checkpoint(p.parent, "{}", {}, {}), "another scenario"),
    ],
    ids=["empty", "truncated", "pickled", "foreign"],
)
def test_a_corrupted_or_foreign_checkpoint_is_refused_with_one_line(
    tmp_path, capsys, damage, message
):
    run = tmp_path / "run"
    args = ["run", str(REPO / "scenarios/quickstart.toml"), "--out", str(run)]
    assert main([*args, "--set", "rounds=2", "--set", "checkpoint_every=1"]) == 0
    damage(run / CHECKPOINT)
    assert main(["run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_resume_of_a_non_run_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_deployment_runs_refuse_resume(tmp_path, capsys):
    s = small_scenario(runtime="deployment")
    create_run_dir(tmp_path / "dep", s.to_toml())
    assert main(["run", "--resume", str(tmp_path / "dep")]) == 2
    assert "cannot resume on runtime 'deployment'" in capsys.readouterr().err
