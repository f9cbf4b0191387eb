"""FedBuff: an update every K arrivals, weighted by 1/sqrt(1 + staleness)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict

from fedsim.results import read_metrics
from fedsim.runtime import compat, launch
from fedsim.servers.fedbuff import Arrival, Buffer, staleness_weight

from .conftest import small_scenario


def arrival(work: int) -> Arrival:
    compat.set_server_identity(1)
    metrics = MetricRecord({"num-examples": 10, "train_loss": 1.0, "grad_evals": 1, "work": work})
    ins = Message(RecordDict(), dst_node_id=5, message_type="train")
    compat.assign_message_id(ins)
    return Arrival(0.0, 0, 0, 0, Message(RecordDict({"metrics": metrics}), reply_to=ins), 0)


def test_buffer_step_is_the_staleness_weighted_mean_over_k():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=7).astype(np.float32) for _ in range(3)]
    taus = [0, 3, 8]
    buf = Buffer()
    for d, t in zip(deltas, taus, strict=True):
        buf.add(d, t, arrival(4))
    by_hand = sum(d / math.sqrt(1 + t) for d, t in zip(deltas, taus, strict=True)) / 3
    np.testing.assert_allclose(buf.step(), by_hand, rtol=1e-6)
    assert staleness_weight(3) == 0.5 and buf.staleness == taus


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


def test_fedbuff_cannot_be_resumed(tmp_path):
    s = small_scenario(rounds=1, system__policy="fedbuff", system__buffer_k=1)
    with pytest.raises(ValueError, match="fedbuff"):
        launch(s, tmp_path, resume=True)
