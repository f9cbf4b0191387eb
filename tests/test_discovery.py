"""Partition discovery: a federation sized differently from the scenario fails at once."""

from __future__ import annotations

import pytest

from fedsim.clients.app import app as client_app
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.nodes import cohort_size, discover_partitions, sample_partitions


def test_discovery_maps_every_partition_to_its_node():
    grid = InProcessGrid(client_app, 5)
    mapping = discover_partitions(grid, 5)
    assert mapping == {c.node_config["partition-id"]: n for n, c in grid.contexts.items()}


def test_a_federation_of_the_wrong_size_is_a_clear_error():
    with pytest.raises(
        RuntimeError, match="num-partitions=2, but the scenario has data.num_clients=20"
    ):
        discover_partitions(InProcessGrid(client_app, 2), 20, timeout=5)


def test_sampling_is_seeded_sized_sorted_and_only_from_eligible():
    everyone = list(range(20))
    cohort = sample_partitions(everyone, 5, seed=7, server_round=3)
    assert len(cohort) == 5 and cohort == sorted(set(cohort))
    assert cohort == sample_partitions(everyone, 5, seed=7, server_round=3)
    assert cohort != sample_partitions(everyone, 5, seed=7, server_round=4)
    some = [1, 4, 9, 16]
    assert set(sample_partitions(some, 2, seed=0, server_round=1)) <= set(some)
    assert sample_partitions(some, 9, seed=0, server_round=1) == some


def test_cohort_size_follows_fraction_and_min_clients():
    assert cohort_size(20, 0.25, 1) == 5
    assert cohort_size(20, 0.01, 3) == 3
    assert cohort_size(2, 0.5, 3) == 2  # never more than are eligible
