"""`fedsim.register_dataset`: a user's loader of arrays as a dataset every partitioner, the
cache of loaded datasets and every runtime can use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from fedsim.data.arrays import ArrayData, dataset_from_arrays
from fedsim.data.base import DATASETS, Dataset, DatasetSpec, NoOptions
from fedsim.data.config import DataConfig
from fedsim.registry import RegistrationError, first_line, strict

Loader = Callable[[Any, int], Any]


def register_dataset(
    name: str, options: type[BaseModel] = NoOptions, doc: str = "", natural: bool | None = None
) -> Callable[[Loader], Loader]:
    """Register `load(options, seed)` as dataset `name`. `options` validates the scenario's
    `data.options` (the loader gets the instance); `load` returns the training data as
    `(x, y)`, `(x, y, clients)` (a client id per example, for `partitioner = "natural"`),
    an `ArrayData` (which may hold a test split), or a `Dataset`. Without a test split,
    `data.test_fraction` of the examples is held out; an options field `standardize = true`
    scales features by the training split's mean and std. `natural`: True if the data
    must be split by its client ids, False if it has none, None for either."""
    options = strict(options, f"dataset {name!r}")

    def deco(load: Loader) -> Loader:
        if not callable(load):
            raise RegistrationError(f"dataset {name!r}: the loader is not callable")

        def build(o: BaseModel, cfg: DataConfig, seed: int) -> Dataset:
            return as_dataset(load(o, seed), cfg, seed, getattr(o, "standardize", False), name)

        DATASETS.register(name, DatasetSpec(options, build, natural), doc or first_line(load))
        return load

    return deco


def as_dataset(out: Any, cfg: DataConfig, seed: int, standardize: bool, name: str) -> Dataset:
    """What a loader returned, as a Dataset."""
    if isinstance(out, Dataset):
        return out
    if isinstance(out, tuple) and len(out) in (2, 3):
        out = ArrayData(*out)
    elif isinstance(out, Mapping):
        out = ArrayData(**out)
    if not isinstance(out, ArrayData):
        raise ValueError(
            f"dataset {name!r}: its loader returned {type(out).__name__}; return (x, y),"
            " (x, y, clients), a dict of those, an ArrayData or a Dataset"
        )
    return dataset_from_arrays(out, cfg, seed, standardize=standardize, meta={"name": name})
