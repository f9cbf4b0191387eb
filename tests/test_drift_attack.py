"""The adapter-drift attack and the held-out and frozen measures beside every attack, in
split-learning runs: what each host's view holds (the evaluation forwards too) and which keys
the summary reports. The attack reading the labels where the adapters learnt them is
asserted in tests/test_split_learning.py's every-attack runs."""

from __future__ import annotations

from fedsim.registry import load_ref
from fedsim.results import read_summary
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.host_views import FLOOR, HELDOUT, HostViews
from fedsim.servers.split import run_split

from .test_split_learning import scenario

DRIFT = ("leak_drift_spectral", "leak_drift_first_spectral")


def test_views_hold_the_evaluation_forwards_and_every_attack_is_scored_three_ways(
    tmp_path, monkeypatch
):
    kinds: dict[str, set] = {}  # kind -> the hosts that were given such calls
    add = HostViews.add

    def recording(self, node, call):
        kinds.setdefault(call.kind, set()).add(node)
        add(self, node, call)

    monkeypatch.setattr(HostViews, "add", recording)
    run_split(
        InProcessGrid(load_ref("fedsim.clients.app:app"), 4),
        scenario(method="p3eft", hosts=4, rounds=4),
        tmp_path,
    )
    assert len(kinds["eval"]) == 2 and len(kinds["act"]) == 2  # set i's first host: i
    run = read_summary(tmp_path)
    for name in (*DRIFT, "leak_act_spectral", "kmeans_act", "leak_update_spectral"):
        assert {name, HELDOUT + name, FLOOR + name} <= run.keys(), name
    assert not any(
        k.startswith((HELDOUT, FLOOR)) and "grad" in k for k in run
    )  # no held-out gradients
    train = [v for k, v in run.items() if k.startswith("leak_")]
    assert run["leak"] == max(train)  # the training examples' leak, as before
    assert run[HELDOUT + "leak"] == max(
        v for k, v in run.items() if k.startswith(HELDOUT + "leak_")
    )
