"""The GPU tier (`pytest -m gpu`): the device-resident paths on `cuda` where a CUDA device
exists, else on the CPU, so that they run in CI every day. What only CUDA can show is skipped
without one, and the run says how many (conftest.py). scripts/gpu_check.sh runs this file on a
lent GPU (docs/gpu.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.clients import split_host
from fedsim.clients.objective import cohort_for
from fedsim.config import client_spec, load_scenario, meta_model
from fedsim.data import load_dataset
from fedsim.method import METHODS, FederatedMethod
from fedsim.models import VMAP_PARAMS
from fedsim.privacy.backbone import BackboneSpec, encode_text, trimmed, words
from fedsim.privacy.clipping import PrivateGradients
from fedsim.registry import load_ref
from fedsim.results import read_metrics
from fedsim.runtime import launch
from fedsim.runtime.cohorts import GIB, STACKED_FLOATS, client_bytes, cohort_chunk
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.host_views import HostViews
from fedsim.servers.split import Hosts, LabelParty

from .conftest import CUDA_ONLY, ray_cluster, small_scenario
from .test_vectorized import CASES

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()


def cuda_only(why: str):
    return pytest.mark.skipif(not CUDA, reason=f"{CUDA_ONLY}: {why}")


@pytest.fixture
def device() -> str:
    """The tier's device: the GPU where there is one, else the CPU."""
    return "cuda" if CUDA else "cpu"


def run(tmp_path, label: str, device: str, **over) -> tuple[list[dict], np.ndarray]:
    """Two rounds of a small scenario (digits, 4 clients) on `device`: rows and final model."""
    s = small_scenario(rounds=2, device=device, data__num_clients=4, **over)
    launch(s, tmp_path / label)
    return read_metrics(tmp_path / label), np.load(tmp_path / label / "final_model.npy")


def assert_same_run(a, b, device: str, label: str) -> None:
    """Same model and rows (wall clock aside); on CUDA batched and per-client kernels may sum
    in another order, so the float tolerance is 10x the CPU's."""
    tol = 10.0 if device.startswith("cuda") else 1.0
    (rows_a, x_a), (rows_b, x_b) = a, b
    np.testing.assert_allclose(x_b, x_a, rtol=1e-5 * tol, atol=1e-6 * tol, err_msg=label)
    assert len(rows_a) == len(rows_b), label
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra.keys() == rb.keys(), label
        for k, v in ra.items():
            if k != "wall_s":
                expect = (
                    pytest.approx(v, rel=1e-5 * tol, abs=1e-6 * tol) if isinstance(v, float) else v
                )
                assert rb[k] == expect, (label, k)


def test_the_parity_cases_cover_every_federated_method():
    federated = {  # fedsim's own (a plug-in another test registered here has no case)
        e.name for e in METHODS if isinstance(e.obj, FederatedMethod) and not e.origin
    }
    assert federated == {case["name"] for case in CASES.values()}


def short(case: str) -> dict:
    """test_vectorized.py's case with whole local epochs (~23 steps on digits) cut to three
    steps: this tier checks where the work runs; test_vectorized.py checks the methods."""
    algorithm = CASES[case]
    params = METHODS.get(algorithm["name"]).params.model_validate(algorithm)
    if getattr(params, "local_epochs", 0):
        return algorithm | {"local_steps": 3, "local_epochs": 0}
    return algorithm


@pytest.mark.parametrize("case", sorted(CASES))
def test_vectorized_cohorts_give_the_sequential_run_on_the_device(tmp_path, device, case):
    seq = run(tmp_path, "seq", device, algorithm=short(case), execution="sequential")
    vec = run(tmp_path, "vec", device, algorithm=short(case), execution="vectorized")
    assert_same_run(seq, vec, device, f"{case} on {device}")


def test_dp_noise_is_the_same_numbers_on_the_device(device):
    """Drawn from the client's CPU generator whatever the device (CUDA refuses to draw on
    the GPU from it), so a private run does not depend on where it ran."""
    layer = torch.nn.Linear(3, 2).to(device)
    private = PrivateGradients(layer, sigma=0.8, c=0.5)
    noisy = private.noisy(torch.zeros(8, device=device), 4.0, torch.Generator().manual_seed(7))
    assert noisy.device.type == torch.device(device).type
    expected = torch.randn(8, generator=torch.Generator().manual_seed(7)) * (0.8 * 0.5 / 4.0)
    torch.testing.assert_close(noisy.cpu(), expected)


def test_dp_sgd_on_the_device_is_one_batched_computation_with_the_sequential_result(
    tmp_path, device
):
    over = {
        "algorithm": {"name": "local_sgd", "local_steps": 3, "batch_size": 16, "fraction": 0.7},
        "privacy": {"mechanism": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 0.5},
    }
    seq = run(tmp_path, "seq", device, execution="sequential", **over)
    vec = run(tmp_path, "vec", device, execution="vectorized", **over)
    plain = run(tmp_path, "plain", device, execution="vectorized", **{**over, "privacy": {}})
    assert np.abs(plain[1] - vec[1]).max() > 1e-2  # the noise and clipping were applied
    assert vec[0][-1]["epsilon"] > 0
    assert_same_run(seq, vec, device, f"dp_sgd on {device}")


def p3eft_step(device: str) -> tuple[float, list[dict[str, torch.Tensor]], Hosts]:
    """One P3EFT training step (2 adapter sets, 2 shards, 4 hosts) with the hosts' backbone
    on `device`: its loss, each adapter set's recombined gradients, and the hosts."""
    s = load_scenario(
        {
            "device": device,
            "data": {"dataset": "sentences", "options": {"train_size": 200, "test_size": 50}},
            "algorithm": {"name": "split_lora", "method": "p3eft", "hosts": 4, "rank": 4},
        }
    )
    p, ds = s.algorithm, load_dataset(s.data, s.seed)
    vocab = ds.meta["vocab"]
    spec = BackboneSpec(p.backbone, len(words(vocab)), s.seed, p.adapters, p.rank, p.lora_alpha)
    grid = InProcessGrid(load_ref("fedsim.clients.app:app"), p.hosts)
    hosts = Hosts(grid, list(grid.get_node_ids()), spec, p.shards, p.rotate, s.device)
    x = trimmed({k: v[:16] for k, v in encode_text(spec, vocab, ds.x_train)[0].items()})
    party = LabelParty(p, spec, ds.num_classes, s.seed)
    loss = party.step(hosts, 1, x, torch.from_numpy(ds.y_train[:16]), HostViews(spec))
    grads = [{k: v.grad.clone() for k, v in theta.items()} for theta in party.thetas]
    return loss, grads, hosts


def test_a_p3eft_step_with_its_hosts_on_the_device_is_the_step_on_the_cpu(device):
    loss, grads, hosts = p3eft_step(device)
    host = split_host.host(hosts.backbone, device)  # the model the hosts answered with
    assert {q.device.type for q in host.model.parameters()} == {torch.device(device).type}
    ref_loss, ref_grads, _ = p3eft_step("cpu")
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    for got, ref in zip(grads, ref_grads, strict=True):
        for k, g in ref.items():
            scale = float(g.abs().max())
            torch.testing.assert_close(got[k], g, rtol=1e-3, atol=1e-3 * scale + 1e-12)


def test_a_cohort_chunk_is_what_the_devices_free_memory_holds(device):
    """Default budget: half the GPU's free memory (as measured now), or a quarter of the
    machine's memory (as /proc/meminfo says); a chunk is the clients it holds, on a CPU
    capped at stacked tensors of STACKED_FLOATS."""
    s = small_scenario(device=device, execution="vectorized")
    per = client_bytes(s)
    if CUDA:
        before = torch.cuda.mem_get_info()[0] / 2
        chunk = cohort_chunk(s)
        after = torch.cuda.mem_get_info()[0] / 2
        assert int(min(before, after) // per) <= chunk <= int(max(before, after) // per)
    else:
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal"))
        d = sum(p.numel() for p in meta_model(s).parameters())
        assert cohort_chunk(s) == min(int(total / 4 // per), STACKED_FLOATS // d)
    given = small_scenario(device=device, execution="vectorized", cohort_memory_gb=3.5 * per / GIB)
    assert cohort_chunk(given) == 3


@cuda_only("a chunk's peak GPU memory against its budget (torch.cuda.max_memory_allocated)")
def test_a_chunk_sized_from_its_budget_stays_within_it_on_cuda(tmp_path, device):
    big = {"model__hidden": [1024, 768], "data__num_clients": 16, "rounds": 1}
    per = client_bytes(small_scenario(**big))
    budget = 4.5 * per
    s = small_scenario(**big, device=device, execution="vectorized", cohort_memory_gb=budget / GIB)
    assert cohort_chunk(s) == 4
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    launch(s, tmp_path / "run")
    assert torch.cuda.max_memory_allocated() - base <= budget


@cuda_only("a model above VMAP_PARAMS is batched by vmap only on CUDA (a CPU runs it on threads)")
def test_a_large_model_is_one_vmap_on_cuda_with_the_sequential_result(tmp_path, device):
    big = {"model__hidden": [2400], "algorithm": CASES["scaffold"]}
    spec = client_spec(small_scenario(device=device, **big))
    f = cohort_for(spec, [0, 1, 2], vectorize=True)
    assert f.model.flat_buffer.numel() > VMAP_PARAMS and f.vmap
    seq = run(tmp_path, "seq", device, execution="sequential", **big)
    vec = run(tmp_path, "vec", device, **big)  # execution = "auto"
    assert_same_run(seq, vec, device, "large model on cuda")


@cuda_only("DP-SGD on convolutions is batched under 'auto' only on CUDA")
def test_private_convolutions_are_batched_on_cuda(tmp_path, device):
    over = {
        "model__name": "cnn",
        "algorithm": {"name": "local_sgd", "local_steps": 2, "batch_size": 16},
        "privacy": {"mechanism": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 0.5},
    }
    assert cohort_chunk(small_scenario(device=device, **over)) > 1
    seq = run(tmp_path, "seq", device, execution="sequential", **over)
    vec = run(tmp_path, "vec", device, **over)  # execution = "auto"
    np.testing.assert_allclose(vec[1], seq[1], rtol=1e-3, atol=1e-4)  # convolutions: TF32


def test_a_simulation_gives_each_client_half_a_gpu(tmp_path, device):
    """Flower's Simulation Engine with `num_gpus = 0.5` on a Ray cluster of one GPU (a
    logical one on a CPU-only machine, where the clients run on the CPU): two clients share
    it, and the run gives the in-process model."""
    pytest.importorskip(
        "ray", reason="Ray is not installed (the GPU bundle leaves it out: over 64 MiB)"
    )
    base = dict(rounds=2, data__num_clients=4, device=device)
    launch(small_scenario(**base), tmp_path / "inprocess")
    with ray_cluster(num_gpus=1) as (address, _):
        sim = dict(runtime="simulation", simulation__address=address, simulation__num_gpus=0.5)
        launch(small_scenario(**base, **sim), tmp_path / "simulation")
    np.testing.assert_allclose(
        np.load(tmp_path / "simulation/final_model.npy"),
        np.load(tmp_path / "inprocess/final_model.npy"),
        rtol=0,
        atol=1e-6,
    )
