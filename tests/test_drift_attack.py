"""The adapter-drift attack and the held-out and frozen measures beside every attack, in
split-learning runs: what each host's view holds (the evaluation forwards too) and which keys
the summary reports. The attack reading the labels where the adapters learnt them is
asserted in tests/test_split_learning.py's every-attack runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import fedsim
from fedsim.data import load_dataset
from fedsim.privacy.backbone import encode_text
from fedsim.registry import load_ref
from fedsim.results import read_summary
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.host_views import FLOOR, HELDOUT, HostViews
from fedsim.servers.split import backbone_spec, run_split

from .conftest import REPO
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


def test_seen_unseen_reloads_a_run_and_reads_the_task_on_training_inputs_it_never_reached(
    tmp_path, monkeypatch
):
    """scenarios/p3eft_table/seen_unseen.py: the final weights it loads give the run's own
    accuracy, its seen inputs are exactly those the hosts were sent, and the drift attack
    reads unseen training inputs (the same distribution) about as well as seen ones, far above
    the frozen floor."""
    sent: set[tuple[int, ...]] = set()
    add = HostViews.add

    def recording(self, node, call):
        if call.kind == "act":
            sent.update(rows(call.x))
        add(self, node, call)

    monkeypatch.setattr(HostViews, "add", recording)
    s = scenario(method="vanilla", rounds=30, leak_every=30)
    fedsim.run(s, out=tmp_path / "run", quiet=True)
    script = load_script(REPO / "scenarios" / "p3eft_table" / "seen_unseen.py")

    m = script.measure(tmp_path / "run", 400)
    assert m["accuracy"] == pytest.approx(m["run_accuracy"], abs=1e-6)
    ds = load_dataset(s.data, s.seed)
    spec = backbone_spec(s.algorithm, ds.meta["vocab"], s.seed)
    (x,) = encode_text(spec, ds.meta["vocab"], ds.x_train)
    seen = script.seen_indices(len(ds.y_train), s.algorithm.batch_size, s.seed, s.rounds)
    assert set(rows({k: v[seen] for k, v in x.items()})) == sent
    (drift,) = m["sets"]
    assert min(drift["seen"], drift["unseen"]) > drift["floor"] + 0.15, drift


def rows(x: dict) -> list[tuple[int, ...]]:
    """Each input's token ids without padding."""
    return [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(*x.values(), strict=True)]


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gap_standard_error_matches_the_null_closed_form_and_a_simulation():
    """seen_unseen.auc_se: exact under no signal ((n + 1) / (12 n1 n0) is the Mann-Whitney
    variance), and at AUC ~0.92 no smaller than the spread of AUCs over 400 simulated
    binormal draws, nor more than 25% above it (conservative, as Hanley and McNeil note)."""
    auc_se = load_script(REPO / "scenarios" / "p3eft_table" / "seen_unseen.py").auc_se
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.55).astype(int)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    assert auc_se(0.5, y) == pytest.approx(np.sqrt((len(y) + 1) / (12 * n1 * n0)))
    aucs = [roc_auc_score(y, rng.normal(2.0 * y, 1.0)) for _ in range(400)]
    assert np.std(aucs) <= auc_se(float(np.mean(aucs)), y) <= 1.25 * np.std(aucs)
