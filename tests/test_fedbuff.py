"""FedBuff: an update every K arrivals, weighted by 1/sqrt(1 + staleness)."""

from __future__ import annotations

import math

import numpy as np
import torch

from fedsim.cli import main
from fedsim.results import create_run_dir, read_metrics
from fedsim.runtime import launch
from fedsim.servers.aggregate import Buffered
from fedsim.servers.driver import staleness_weight

from .conftest import small_scenario


def test_buffer_step_is_the_staleness_weighted_mean_over_k():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=7).astype(np.float32) for _ in range(3)]
    taus = [0, 3, 8]
    buf = Buffered()
    for d, t in zip(deltas, taus, strict=True):
        buf.add(torch.from_numpy(d), staleness_weight(t))
    by_hand = sum(d / math.sqrt(1 + t) for d, t in zip(deltas, taus, strict=True)) / 3
    np.testing.assert_allclose(buf.value(), by_hand, rtol=1e-6)
    assert staleness_weight(3) == 0.5


def test_fedbuff_run_updates_every_k_arrivals(tmp_path):
    s = small_scenario(
        rounds=5,
        algorithm__fraction=0.5,
        system__policy="fedbuff",
        system__buffer_k=2,
        system__speed={"dist": "lognormal", "median": 100.0, "sigma": 1.0},
    )
    launch(s, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["clients"] == 2 for r in rows)
    times = [r["sim_time_s"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert any(r["staleness_max"] > 0 for r in rows)  # 3 in flight, K = 2: some arrive late
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]


def test_fedbuff_cannot_be_resumed(tmp_path, capsys):
    s = small_scenario(rounds=1, system__policy="fedbuff", system__buffer_k=1)
    create_run_dir(tmp_path / "run", s.to_toml())
    assert main(["run", "--resume", str(tmp_path / "run")]) == 2
    assert "'fedbuff' runs keep no checkpoints" in capsys.readouterr().err
