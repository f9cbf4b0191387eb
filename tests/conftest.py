"""Shared fixtures: small scenarios that run in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import load_scenario

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def small_scenario(**over: object):
    """Digits, 6 clients, Dirichlet, a small MLP, FedAvg: a few seconds per run."""
    raw = {
        "name": "small",
        "seed": 3,
        "rounds": 3,
        "data": {"dataset": "digits", "num_clients": 6, "partitioner": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [32]},
        "algorithm": {"name": "fedavg", "local_epochs": 1, "batch_size": 16, "client_lr": 0.2},
    }
    for key, value in over.items():
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return load_scenario(raw)


@pytest.fixture
def scenario_factory():
    return small_scenario
