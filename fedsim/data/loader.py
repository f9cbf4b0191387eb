"""Cached, deterministic dataset loading and client partitioning for a `DataConfig` and seed."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from fedsim.data.base import DATASETS, Dataset
from fedsim.data.config import DataConfig, parse_options
from fedsim.data.partition import partition_labels

T = TypeVar("T")


def _cached(fn: Callable[[DataConfig, int], T]) -> Callable[[DataConfig, int], T]:
    """Memoise `fn(cfg, seed)` on the config's JSON (configs are not hashable), less `l2`:
    it enters client_data only, so a scenario differing in l2 alone (a convex problem's
    constants at another lambda, a sweep over l2) shares the loaded data and its split."""
    cached = functools.lru_cache(maxsize=16)(
        lambda cfg_json, seed: fn(DataConfig.model_validate_json(cfg_json), seed)
    )
    return functools.wraps(fn)(lambda cfg, seed: cached(cfg.model_dump_json(exclude={"l2"}), seed))


@_cached
def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset of `cfg`, built once per (config, seed) and shared: do not modify it."""
    options = parse_options(cfg.dataset, cfg.options, cfg.num_clients)
    return DATASETS.get(cfg.dataset).load(options, cfg, seed)


@_cached
def partition_indices(cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """One sorted int64 index array into `x_train` per client (datasets held in memory)."""
    dataset = load_dataset(cfg, seed)
    if dataset.client is not None:
        raise ValueError(f"{cfg.dataset!r} generates each client on demand: use client_data")
    if cfg.partitioner == "natural":
        return [np.asarray(idx, dtype=np.int64) for idx in dataset.client_splits]
    return partition_labels(dataset.y_train, cfg, seed)


def client_data(
    cfg: DataConfig, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Features, labels and l2 coefficient of one client (`cfg.l2` plus its natural split's)."""
    dataset = load_dataset(cfg, seed)
    l2 = cfg.l2 + (0.0 if dataset.client_l2 is None else float(dataset.client_l2[partition_id]))
    if dataset.client is not None:
        return *dataset.client(partition_id), l2
    idx = partition_indices(cfg, seed)[partition_id]
    return dataset.x_train[idx], dataset.y_train[idx], l2
