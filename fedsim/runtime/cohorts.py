"""How the in-process runtime runs a round's clients: as batched cohorts (the vectorized
path, in chunks that fit a memory budget) or one by one through the ClientApp."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from fedsim.config import Scenario, meta_model
from fedsim.data import load_dataset, partition_indices
from fedsim.method import FederatedMethod
from fedsim.models import VMAP_PARAMS, vmaps

GIB = 2**30
STACKED_FLOATS = 4 * 2**20  # a [C, d] float32 tensor of at most 16 MiB: the allocator reuses it


def cohort_chunk(scenario: Scenario) -> int | None:
    """Clients per batched chunk, or None when the clients run one by one (the reason is
    said once, on stderr)."""
    method = scenario.method
    if scenario.runtime != "inprocess" or scenario.execution == "sequential":
        return None
    if not isinstance(method, FederatedMethod):
        return None
    if not method.supports.vectorized:
        print(f"fedsim: {method.name}: clients run one by one (no batched round)", file=sys.stderr)
        return None
    model = meta_model(scenario)
    if private_convolutions_on_cpu(scenario, model) and scenario.execution == "auto":
        print(
            "fedsim: DP-SGD on convolutions: clients run one by one (faster here)", file=sys.stderr
        )
        return None
    budget = (
        scenario.cohort_memory_gb * GIB
        if scenario.cohort_memory_gb
        else default_budget(scenario.device)
    )
    chunk = max(1, int(budget // client_bytes(scenario, model)))
    d = sum(p.numel() for p in model.parameters())
    stacked = vmaps(model)
    if stacked and scenario.device.startswith("cuda"):
        return chunk
    if d > VMAP_PARAMS or not stacked:  # the loop engine's workers, two clients each per
        return min(chunk, 2 * torch.get_num_threads())  # chunk (2, 4 or 8: within noise)
    return min(chunk, max(1, STACKED_FLOATS // d))


def private_convolutions_on_cpu(scenario: Scenario, model: nn.Module) -> bool:
    """DP-SGD on a model with convolutions on a CPU: a batched cohort's per-example products
    under vmap measured 1.06-1.24x slower than its clients one by one
    (benchmarks/dp_overhead.py), so "auto" runs them one by one."""
    return (
        scenario.privacy.mechanism == "dp_sgd"
        and not scenario.device.startswith("cuda")
        and any(isinstance(m, nn.Conv2d) for m in model.modules())
    )


def default_budget(device: str) -> float:
    """A quarter of the machine's memory, or half of the GPU's free memory."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free / 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4


def client_bytes(scenario: Scenario, model: nn.Module | None = None) -> float:
    """A generous estimate of one client's memory in a batched cohort: its copies of the
    model (parameters, gradient, start point, method state), its padded examples, and the
    activations of a batch."""
    ds = load_dataset(scenario.data, scenario.seed)
    features = ds.x_train.shape[1]
    if model is None:
        model = meta_model(scenario)  # on the meta device
    d = sum(p.numel() for p in model.parameters())
    # activations per example: every layer's outputs (a convolution's at every pixel)
    widths = sum(
        p.shape[0] * (features if p.dim() == 4 else 1) for p in model.parameters() if p.dim() > 1
    )
    if ds.client is None:
        examples = max(len(idx) for idx in partition_indices(scenario.data, scenario.seed))
    else:
        examples = 4 * len(ds.x_train) // max(1, scenario.data.num_clients) + 1024
    batch = getattr(scenario.algorithm, "batch_size", 0) or examples
    return 4.0 * (24 * d + 2 * examples * features + 8 * batch * (widths + features))
