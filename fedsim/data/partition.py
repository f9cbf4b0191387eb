"""Client splits: by label (iid, dirichlet, shards) through flwr-datasets' partitioners, and
by a natural client id (flwr-datasets' NaturalIdPartitioner's split) with LEAF's per-client
hold-out. No step does Python work per example: columns are read as whole Arrow arrays."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
    # the Arrow format hands the partitioners the label column as one array, not row by row
    frame = HFDataset.from_dict({"label": labels[order], "idx": order})
    partitioner.dataset = frame.with_format("arrow")
    try:
        with _unhashed_selections():
            parts = [partitioner.load_partition(i) for i in range(cfg.num_clients)]
    except ValueError as err:
        raise ValueError(
            f"{cfg.partitioner!r} partitioning of {len(labels)} examples among "
            f"{cfg.num_clients} clients failed (try fewer clients, or for dirichlet a "
            f"larger alpha): {err}"
        ) from err
    return [np.sort(arrow_column(part, "idx").to_numpy()).astype(np.int64) for part in parts]


@contextmanager
def _unhashed_selections() -> Iterator[None]:
    """`datasets` fingerprints every `select` by pickling its index list element by element
    (seconds per million rows) for a cache that this in-memory frame never uses: a random
    fingerprint does meanwhile."""
    from datasets import fingerprint

    hashed = fingerprint.update_fingerprint
    fingerprint.update_fingerprint = lambda *_: fingerprint.generate_random_fingerprint()
    try:
        yield
    finally:
        fingerprint.update_fingerprint = hashed


def arrow_column(ds: Any, name: str) -> Any:
    """Column `name` of a `datasets.Dataset` as one pyarrow array: a selection's rows in one
    take (`ds[name]` reads a selection through a Python list of its positions)."""
    column = ds.data.column(name)
    if ds._indices is not None:  # a selection: positions into ds.data
        column = column.take(ds._indices.column(0))
    return column


def natural_clients(ids: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """The sorted rows of each client: NaturalIdPartitioner's split (partition k is the k-th
    id in sorted order) computed in NumPy, `num_clients` of the ids (all of them, or a
    seeded sample)."""
    _, partition = np.unique(ids, return_inverse=True)  # each row's partition number
    sizes = np.bincount(partition)
    available = len(sizes)
    if num_clients > available:
        raise ValueError(f"num_clients: {num_clients} is more than the {available} natural clients")
    rows = np.split(np.argsort(partition, kind="stable"), np.cumsum(sizes)[:-1])
    chosen = range(available)
    if num_clients < available:
        chosen = sorted(np.random.default_rng(seed).choice(available, num_clients, replace=False))
    return [rows[p].astype(np.int64) for p in chosen]


def hold_out(rows: list[np.ndarray], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """LEAF's split of natural clients: `fraction` of each client's rows (rounded, each
    client keeping one at least) are the test set."""
    held = [r[rng.permutation(len(r))[: min(len(r) - 1, round(len(r) * fraction))]] for r in rows]
    test = np.sort(np.concatenate(held))
    if not len(test):
        raise ValueError(f"test_fraction: {fraction} of these clients' examples holds out none")
    return test


@dataclass(frozen=True)
class Rows:
    """Which rows of a source train and which are held out, and the natural clients."""

    train: np.ndarray  # sorted row numbers
    test: np.ndarray | None  # sorted row numbers held out; None: the source has a test split
    clients: list[np.ndarray] | None  # natural split: each client's positions within `train`


def split_rows(
    ids: np.ndarray | None,
    n: int,
    cfg: DataConfig,
    seed: int,
    rng: np.random.Generator,
    *,
    held_out: bool,
) -> Rows:
    """The rows of a source of `n` examples with client ids `ids`: with a natural split the
    chosen clients' rows (LEAF's hold-out when `held_out`), else every row (a seeded
    `test_fraction` of them held out when `held_out`)."""
    if cfg.partitioner != "natural":
        if not held_out:
            return Rows(np.arange(n), None, None)
        order = rng.permutation(n)
        cut = int(round(n * cfg.test_fraction))
        return Rows(np.sort(order[cut:]), np.sort(order[:cut]), None)
    clients = natural_clients(ids, cfg.num_clients, seed)
    test = hold_out(clients, cfg.test_fraction, rng) if held_out else None
    if test is not None:
        clients = [np.setdiff1d(c, test) for c in clients]
    train = np.sort(np.concatenate(clients))
    return Rows(train, test, [np.searchsorted(train, c).astype(np.int64) for c in clients])
