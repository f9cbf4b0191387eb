"""Partition discovery: a federation sized differently from the scenario fails at once."""

from __future__ import annotations

import pytest

from fedsim.clients.app import app as client_app
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.nodes import discover_partitions, sample_partitions


def test_discovery_maps_every_partition_to_its_node():
    grid = InProcessGrid(client_app, 5)
    mapping = discover_partitions(grid, 5)
    assert mapping == {c.node_config["partition-id"]: n for n, c in grid.contexts.items()}


def test_a_federation_of_the_wrong_size_is_a_clear_error():
    with pytest.raises(
        RuntimeError, match="num-partitions=2, but the scenario has data.num_clients=20"
    ):
        discover_partitions(InProcessGrid(client_app, 2), 20, timeout=5)


def test_sampling_is_seeded_sized_and_sorted():
    cohort = sample_partitions(20, 0.25, 1, seed=7, server_round=3)
    assert len(cohort) == 5 and cohort == sorted(set(cohort))
    assert cohort == sample_partitions(20, 0.25, 1, seed=7, server_round=3)
    assert cohort != sample_partitions(20, 0.25, 1, seed=7, server_round=4)
    assert len(sample_partitions(20, 0.01, 3, seed=0, server_round=1)) == 3  # min_clients
    assert sample_partitions(4, 1.0, 1, seed=0, server_round=1) == [0, 1, 2, 3]
