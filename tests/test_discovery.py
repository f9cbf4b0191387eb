"""Partition discovery: a federation sized differently from the scenario fails at once."""

from __future__ import annotations

import pytest

from fedsim.clients.app import app as client_app
from fedsim.runtime.inprocess import InProcessGrid
from fedsim.servers.nodes import cohort_size, discover_partitions, sample_partitions


class AskingGrid(InProcessGrid):
    """The in-process grid without its own table: discovery asks every node, as on Ray and
    on SuperNodes."""

    partitions = None


def test_discovery_maps_every_partition_to_its_node():
    grid = AskingGrid(client_app, 5)
    mapping = discover_partitions(grid, 5)
    assert mapping == {c.node_config["partition-id"]: n for n, c in grid.contexts.items()}
    assert len(grid.contexts) == 5  # every node was asked
    assert dict(discover_partitions(InProcessGrid(client_app, 5), 5)) == mapping


def test_a_federation_of_the_wrong_size_is_a_clear_error():
    with pytest.raises(
        RuntimeError, match="num-partitions=2, but the scenario has data.num_clients=20"
    ):
        discover_partitions(AskingGrid(client_app, 2), 20, timeout=5)
    with pytest.raises(RuntimeError, match="the grid has 2 nodes, but the scenario has"):
        discover_partitions(InProcessGrid(client_app, 2), 20, timeout=5)


def test_ten_million_registered_clients_cost_nothing_until_reached():
    grid = InProcessGrid(client_app, 10_000_000)
    table = discover_partitions(grid, 10_000_000)
    assert len(table) == 10_000_000 and table[9_999_999] == max(grid.get_node_ids())
    assert len(grid.contexts) == 0
    assert grid.contexts[table[123]].node_config["partition-id"] == 123


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
