"""Streaming aggregation: replies in cohort order whatever their arrival order; running sums."""

from __future__ import annotations

import random

import numpy as np
from flwr.app import Message, RecordDict

from fedsim.codecs import pack, readonly_tensor, unpack
from fedsim.runtime import compat
from fedsim.servers.aggregate import WeightedSum, in_cohort_order


def replies_from(nodes: list[int]) -> list[Message]:
    compat.set_server_identity(1)
    out = []
    for n in nodes:
        ins = Message(RecordDict(), dst_node_id=n, message_type="train")
        compat.assign_message_id(ins)
        out.append(Message(RecordDict(), reply_to=ins))
    return out


def test_replies_come_out_in_cohort_order_whatever_the_arrival():
    cohort = [40, 10, 30, 20, 50]
    for seed in range(5):
        arrivals = replies_from(cohort)
        random.Random(seed).shuffle(arrivals)
        got = [m.metadata.src_node_id for m in in_cohort_order(arrivals, cohort)]
        assert got == cohort


def test_missing_replies_leave_gaps_and_the_rest_still_come_in_order():
    cohort = [1, 2, 3, 4]
    arrivals = replies_from([4, 2, 3])  # node 1 never answers
    assert [m.metadata.src_node_id for m in in_cohort_order(arrivals, cohort)] == [2, 3, 4]


def test_in_order_replies_are_passed_through_without_waiting():
    cohort = [7, 8, 9]
    stream = iter(replies_from(cohort))
    ordered = in_cohort_order(stream, cohort)
    assert next(ordered).metadata.src_node_id == 7
    assert next(stream).metadata.src_node_id == 8  # nothing was read ahead


def test_weighted_sum_matches_numpy_on_read_only_views():
    rng = np.random.default_rng(0)
    vs = [rng.normal(size=1000).astype(np.float32) for _ in range(4)]
    ws = [3.0, 1.0, 5.0, 2.0]
    acc = WeightedSum()
    for v, w in zip(vs, ws, strict=True):
        acc.add(readonly_tensor(unpack(pack(v))), w)  # read-only views, as decoded
    expected = sum(w * v.astype(np.float64) for v, w in zip(vs, ws, strict=True)) / sum(ws)
    np.testing.assert_allclose(acc.value(), expected, rtol=1e-5, atol=1e-6)
    assert acc.weight == sum(ws)
