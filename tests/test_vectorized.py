"""Vectorized cohorts: the in-process runtime's batched path gives the sequential path's
model and rows (float32 tolerance), with client sampling, unequal client sizes, injected
failures and any chunk size; methods and mechanisms that cannot be batched fall back."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import ScenarioError, load_scenario
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.runtime.cohorts import GIB, client_bytes, cohort_chunk

from .conftest import small_scenario

LOSSY = {"failures": {"raise_p": 0.15, "vanish_p": 0.1}, "timeout_s": 30.0}
CASES = {
    "fedavg_epochs": {"name": "fedavg", "local_epochs": 2, "batch_size": 16, "fraction": 0.7},
    "local_sgd_topk_ef": {
        "name": "local_sgd",
        "local_steps": 3,
        "batch_size": 16,
        "uplink": "topk:0.05",
        "error_feedback": True,
        "fraction": 0.7,
    },
    "fedprox": {"name": "fedprox", "mu": 0.3, "batch_size": 16, "fraction": 0.7},
    "scaffold": {"name": "scaffold", "local_steps": 3, "batch_size": 16, "fraction": 0.7},
    "proxskip": {"name": "proxskip", "p": 0.4, "client_lr": 0.05, "batch_size": 16},
    "gradskip": {"name": "gradskip", "p": 0.4, "client_lr": 0.05, "batch_size": 16, "q": 0.6},
    "gradskip_plus": {
        "name": "gradskip_plus",
        "p": 0.4,
        "client_lr": 0.05,
        "q": 0.7,
        "comm_density": 0.5,
        "skip_density": 0.5,
    },
    "scaled_adam": {
        "name": "scaled_sgd",
        "preconditioner": "adam",
        "local_steps": 3,
        "client_lr": 0.01,
        "alpha": 0.1,
        "fraction": 0.7,
    },
    "scaled_oasis_local": {
        "name": "scaled_sgd",
        "preconditioner": "oasis",
        "variant": "local",
        "local_steps": 2,
        "client_lr": 0.01,
        "alpha": 0.1,
    },
    "signsgd_mv": {"name": "signsgd_mv", "server_lr": 0.01, "fraction": 0.7},
    "signum_mv": {"name": "signum_mv", "server_lr": 0.01, "fraction": 0.7},
    "ef_signsgd": {"name": "ef_signsgd", "client_lr": 0.05, "fraction": 0.7},
}


def run(tmp_path, label: str, **over):
    s = small_scenario(rounds=4, system=LOSSY, **over)
    launch(s, tmp_path / label)
    return read_metrics(tmp_path / label), np.load(tmp_path / label / "final_model.npy")


def assert_same(a, b, label: str) -> None:
    (rows_a, x_a), (rows_b, x_b) = a, b
    np.testing.assert_allclose(x_b, x_a, rtol=1e-5, atol=1e-6, err_msg=label)
    assert len(rows_a) == len(rows_b), label
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.keys() == rb.keys(), label
        for k, v in ra.items():
            if k == "wall_s":
                continue
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (label, k)
            else:
                assert rb[k] == v, (label, k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vectorized_cohorts_give_the_sequential_model_and_rows(tmp_path, case):
    algorithm = CASES[case]
    seq = run(tmp_path, "seq", algorithm=algorithm, execution="sequential")
    vec = run(tmp_path, "vec", algorithm=algorithm, execution="vectorized")
    assert sum(r["failures"] + r["dropouts"] for r in seq[0]) > 0  # the failures happened
    assert np.abs(seq[1] - vec[1]).max() < 1e-4 and seq[0][-1]["round"] == 4
    assert_same(seq, vec, case)


def test_chunks_of_any_size_give_the_same_run(tmp_path):
    algorithm = CASES["scaffold"] | {"fraction": 1.0}
    s = small_scenario(algorithm=algorithm)
    per_client = client_bytes(s) / GIB
    whole = run(tmp_path, "whole", algorithm=algorithm, execution="vectorized")
    chunked = run(
        tmp_path,
        "chunk",
        algorithm=algorithm,
        execution="vectorized",
        cohort_memory_gb=2.5 * per_client,
    )
    assert cohort_chunk(small_scenario(algorithm=algorithm, cohort_memory_gb=2.5 * per_client)) == 2
    assert_same(whole, chunked, "chunks of 2")


def test_a_large_model_asked_to_batch_runs_in_chunks_client_by_client(tmp_path):
    # on a CPU, above VMAP_PARAMS the chunk's clients take the loop engine, one after another
    algorithm = CASES["scaffold"]
    over = {"model__hidden": [2400], "algorithm": algorithm}
    seq = run(tmp_path, "seq", execution="sequential", **over)
    vec = run(tmp_path, "vec", execution="vectorized", **over)
    assert_same(seq, vec, "large model")


def test_what_cannot_be_batched_falls_back_and_says_so(capsys):
    dp = {"mechanism": "dp_sgd", "noise_multiplier": 1.0}
    assert cohort_chunk(small_scenario(privacy=dp)) is None
    assert "clients run one by one (DP-SGD goes through Opacus)" in capsys.readouterr().err
    assert cohort_chunk(small_scenario(execution="sequential")) is None
    assert cohort_chunk(small_scenario()) > 1
    big = {"model__hidden": [2400]}  # 180,010 parameters: above VMAP_PARAMS
    assert cohort_chunk(small_scenario(**big)) is None
    assert "does not batch faster on a CPU" in capsys.readouterr().err
    assert cohort_chunk(small_scenario(**big, execution="vectorized")) >= 2
    with pytest.raises(ScenarioError, match="execution: 'vectorized' is not possible"):
        load_scenario(small_scenario(privacy=dp).to_dict() | {"execution": "vectorized"})
    with pytest.raises(ScenarioError, match="runtime 'simulation' runs each client"):
        small_scenario(runtime="simulation", execution="vectorized")
