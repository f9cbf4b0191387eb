"""Core data types: a loaded dataset, a registered dataset's spec, and the registry."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from fedsim.registry import Registry

if TYPE_CHECKING:
    from fedsim.data.config import DataConfig


@dataclass(frozen=True)
class Dataset:
    """Flat float32 features and int64 labels, with a held-out split for server evaluation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int  # 2 means a binary task: labels in {0, 1}, one logit, BCE-with-logits
    client_splits: list[np.ndarray] | None = None  # natural split: train indices per client
    client_l2: np.ndarray | None = None  # natural split: l2 coefficient per client (None: 0)
    meta: dict[str, Any] = field(default_factory=dict)
    # lazily generated natural clients: client(k) -> (x, y) of client k's training data, made
    # on demand so memory grows with the clients sampled, not the population (x_train is empty)
    client: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset: its options model, its loader, and whether it is pre-split.

    `load(options, cfg, seed)` gets the validated options model, the whole `DataConfig`
    (for `num_clients` and `test_fraction`) and the scenario seed; it must be deterministic.
    """

    options: type[BaseModel]
    load: Callable[[Any, DataConfig, int], Dataset]
    natural: bool | None  # None: either, as the scenario's partitioner says (hf datasets)


class NoOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """Options model of a dataset that takes none."""


DATASETS: Registry[DatasetSpec] = Registry("dataset")
PAD = 0  # the token id that pads text to a fixed length ("" in a dataset's vocabulary)


def open_text(path: str | Path) -> IO[str]:
    """Open a plain or gzipped (by the .gz suffix) UTF-8 text file."""
    path = Path(path)
    return (
        gzip.open(path, "rt", encoding="utf-8")
        if path.suffix == ".gz"
        else path.open(encoding="utf-8")
    )
