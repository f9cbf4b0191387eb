"""Vectorized cohorts: the in-process runtime's batched path gives the sequential path's
model and rows (float32 tolerance), with client sampling, unequal client sizes, injected
failures and any chunk size; methods and mechanisms that cannot be batched fall back."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.clients.objective import Cohort, Shard
from fedsim.config import ScenarioError, load_scenario
from fedsim.models import VMAP_PARAMS, ModelConfig, bind, build_model, flat_params
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


@pytest.mark.parametrize("case", ["scaffold", "scaled_oasis_local"])
def test_a_large_model_runs_its_clients_side_by_side_with_the_sequential_result(tmp_path, case):
    # on a CPU, above VMAP_PARAMS a chunk's clients take the loop engine on worker threads
    # (gradients, and OASIS's Hessian-vector products)
    over = {"model__hidden": [2400], "algorithm": CASES[case]}
    seq = run(tmp_path, "seq", execution="sequential", **over)
    vec = run(tmp_path, "vec", **over)  # execution = "auto"
    assert_same(seq, vec, "large model")


@pytest.fixture
def two_threads():
    """torch on two threads (the suite's workers run on one each): a pool of two replicas."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_worker_threads_give_each_client_its_own_gradient(two_threads):
    # against each client alone through autograd in float64, one model per client
    torch.manual_seed(0)
    cfg = ModelConfig(name="mlp", hidden=[512, 256])
    model = build_model(cfg, 64, 10, seed=0)
    assert sum(p.numel() for p in model.parameters()) > VMAP_PARAMS
    model.flat_buffer, model.private = flat_params(model), None
    sizes = (9, 17, 5, 12, 30)
    shards = [Shard(torch.randn(n, 64), torch.randint(0, 10, (n,)), 0.0) for n in sizes]
    cohort = Cohort(model, shards, 10, vectorize=True)
    assert not cohort.vmap and len(cohort.replicas) == torch.get_num_threads()
    seen = set()  # (replica, thread) pairs
    for k, r in enumerate(cohort.replicas):
        r.register_forward_hook(lambda *_, k=k: seen.add((k, threading.current_thread().name)))
    x = 0.05 * torch.randn(len(shards), model.flat_buffer.numel())
    cohort.bind(x)
    loss, g = cohort.loss_grad(cohort.all())
    for c, s in enumerate(shards):
        alone = build_model(cfg, 64, 10, seed=0).double()
        params = bind(alone, x[c].double().clone())
        ref = nn.functional.cross_entropy(alone(s.inputs.double()), s.targets)
        ref_g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(ref, params)])
        assert float(loss[c]) == pytest.approx(float(ref.detach()), rel=1e-5)
        torch.testing.assert_close(g[c].double(), ref_g, rtol=1e-4, atol=1e-6)
    # every replica ran clients, on the pool, not this thread (which pool thread takes which
    # share is the executor's choice: under load one thread may take both)
    assert len(cohort.replicas) == 2 and {k for k, _ in seen} == {0, 1}
    assert all(name.startswith("fedsim-client") for _, name in seen)
    assert torch.get_num_threads() == len(cohort.replicas)  # the setting is restored


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_private_cohort_is_one_batched_computation_with_the_sequential_result(tmp_path, model):
    """DP-SGD per example inside per client: Poisson batches of unequal sizes padded and
    masked, each client's noise from its own generator, as alone."""
    over = {
        "model__name": model,
        "algorithm": {"name": "local_sgd", "local_steps": 3, "batch_size": 16, "fraction": 0.7},
        "privacy": {"mechanism": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 0.5},
    }
    seq = run(tmp_path, "seq", execution="sequential", **over)
    vec = run(tmp_path, "vec", execution="vectorized", **over)
    plain = run(tmp_path, "plain", execution="vectorized", **{**over, "privacy": {}})
    assert np.abs(plain[1] - vec[1]).max() > 1e-2  # the noise and clipping were applied
    assert vec[0][-1]["epsilon"] > 0
    assert_same(seq, vec, f"dp_sgd {model}")


def test_what_is_not_batched_runs_client_by_client():
    split = load_scenario({"data": {"dataset": "sentences"}, "algorithm": {"name": "split_lora"}})
    assert cohort_chunk(split) is None  # split learning's own protocol
    assert cohort_chunk(small_scenario(execution="sequential")) is None
    assert cohort_chunk(small_scenario()) > 1
    big = {"model__hidden": [2400]}  # 180,010 parameters: above VMAP_PARAMS
    assert cohort_chunk(small_scenario(**big)) == 2 * torch.get_num_threads()
    dp = {"mechanism": "dp_sgd", "noise_multiplier": 1.0}
    assert cohort_chunk(small_scenario(privacy=dp)) > 1  # per example inside per client
    conv = {"privacy": dp, "model__name": "cnn"}  # measured faster one by one on a CPU
    assert cohort_chunk(small_scenario(**conv)) is None
    assert cohort_chunk(small_scenario(execution="vectorized", **conv)) > 1
    with pytest.raises(ScenarioError, match="runtime 'simulation' runs each client"):
        small_scenario(runtime="simulation", execution="vectorized")
