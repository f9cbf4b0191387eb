"""Label-based client splits (iid, dirichlet, shards) through flwr-datasets partitioners."""

from __future__ import annotations

import math

import numpy as np

from fedsim.data.config import DataConfig

# Dirichlet sampling is repeated (up to 10 times by flwr-datasets) until every client has at
# least this many examples. 1 only rules out empty clients: larger minimums make small alphas
# fail on small data (at alpha=0.1, 50 clients on 1437 digits already fail often with 2).
MIN_PARTITION_SIZE = 1


def _partitioner(cfg: DataConfig, num_examples: int, seed: int):
    """The flwr-datasets partitioner that implements `cfg.partitioner`."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    match cfg.partitioner:
        case "iid":  # contiguous blocks of the (seeded, shuffled) rows
            return IidPartitioner(cfg.num_clients)
        case "dirichlet":  # self-balancing as in the code of Yurochkin et al. (2019)
            return DirichletPartitioner(
                cfg.num_clients,
                partition_by="label",
                alpha=cfg.alpha,
                min_partition_size=MIN_PARTITION_SIZE,
                self_balancing=True,
                seed=seed,
            )
        case "shards":
            # Shards of ceil(N / (clients * shards_per_client)) label-sorted rows, the short last
            # one kept, so every example is used; clients get shards_per_client shards each
            # (some get one fewer when N is small). The library's num_shards_per_partition
            # mode would instead drop the rows beyond clients * shards_per_client full shards.
            size = math.ceil(num_examples / (cfg.num_clients * cfg.shards_per_client))
            return ShardPartitioner(
                cfg.num_clients,
                partition_by="label",
                shard_size=size,
                keep_incomplete_shard=True,
                seed=seed,
            )
    raise ValueError(f"partitioner {cfg.partitioner!r} does not split by label")


def partition_labels(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """One sorted int64 index array into `labels` per client, as `cfg.partitioner` says."""
    from datasets import Dataset as HFDataset  # heavy import (~2 s), only needed here

    if len(labels) < cfg.num_clients:
        raise ValueError(f"cannot split {len(labels)} examples among {cfg.num_clients} clients")
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = _partitioner(cfg, len(labels), seed)
    partitioner.dataset = HFDataset.from_dict({"label": labels[order], "idx": order})
    try:
        parts = [partitioner.load_partition(i) for i in range(cfg.num_clients)]
    except ValueError as err:
        raise ValueError(
            f"{cfg.partitioner!r} partitioning of {len(labels)} examples among "
            f"{cfg.num_clients} clients failed (try fewer clients, or for dirichlet a "
            f"larger alpha): {err}"
        ) from err
    return [np.sort(part.with_format("numpy")["idx"]).astype(np.int64) for part in parts]
