"""NumPy arrays: an .npz file or .npy files given by options.path (client ids: natural split)

`dataset_from_arrays` turns arrays (features, labels, optionally a client id per example and
test arrays) into a fedsim `Dataset`: features flattened to (n, features), float as float32
and integer kept as int64 token ids; labels as 0..K-1 in sorted order of their values
(`meta["labels"]`); `data.test_fraction` of the rows held out when no test arrays are given
(LEAF's per-client hold-out with `partitioner = "natural"`, whose clients are the ids);
optionally standardized with the mean and scale of the training split only. The `arrays`
kind reads the arrays from files and keeps the result in fedsim's on-disk cache, keyed by
the files' contents, the options, the split settings and the seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.cache import cached
from fedsim.data.config import DataConfig
from fedsim.data.partition import split_rows


@dataclass(frozen=True)
class ArrayData:
    """Features and labels, a client id per training example for a natural split, and test
    arrays (None: `data.test_fraction` of the training rows is held out)."""

    x: np.ndarray
    y: np.ndarray
    clients: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def dataset_from_arrays(
    a: ArrayData,
    cfg: DataConfig,
    seed: int,
    *,
    standardize: bool = False,
    meta: dict | None = None,
) -> Dataset:
    """The dataset of arrays `a`, split as `cfg` says (ValueError naming what is wrong)."""
    x, y = feature_rows(a.x, "x"), np.asarray(a.y)
    per_example(y, x, "y")
    clients = None if a.clients is None else np.asarray(a.clients)
    if clients is not None:
        per_example(clients, x, "clients")
    elif cfg.partitioner == "natural":
        raise ValueError("partitioner 'natural' needs a client id per training example")
    if (a.x_test is None) != (a.y_test is None):
        raise ValueError("x_test and y_test go together: give both or neither")
    rng = np.random.default_rng(seed)
    rows = split_rows(clients, len(x), cfg, seed, rng, held_out=a.x_test is None)
    x_test, y_test = given_test(a, x) if rows.test is None else (x[rows.test], y[rows.test])
    x_train = x[rows.train]
    if standardize:
        x_train, x_test = standardized(x_train, x_test)
    y_train, y_test, names = encode_labels(y[rows.train], y_test)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(names),
        client_splits=rows.clients,
        meta={**(meta or {}), "labels": names},
    )


def given_test(a: ArrayData, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The given test arrays, checked against each other and against the training features."""
    x_test, y_test = feature_rows(a.x_test, "x_test"), np.asarray(a.y_test)
    per_example(y_test, x_test, "y_test")
    if x_test.shape[1] != x.shape[1] or x_test.dtype != x.dtype:
        raise ValueError(
            f"x_test has {x_test.shape[1]} {x_test.dtype} features per example, x has "
            f"{x.shape[1]} {x.dtype}"
        )
    return x_test, y_test


def feature_rows(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as (n, features): float32 numbers (all finite) or int64 token ids."""
    x = np.asarray(x)
    if x.ndim < 2 or not len(x):
        raise ValueError(f"{name} must have a row of features per example, not shape {x.shape}")
    if x.dtype.kind in "iu":
        return x.reshape(len(x), -1).astype(np.int64, copy=False)
    if x.dtype.kind not in "bf":
        raise ValueError(f"{name} holds {x.dtype} values, not numbers")
    x = x.reshape(len(x), -1).astype(np.float32, copy=False)
    check_finite(x, name)
    return x


def check_finite(x: np.ndarray, name: str) -> None:
    """No NaN or infinite feature (they would poison every model that reads them)."""
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN or infinite values (the first in row {row}, "
            f"feature {col})"
        )


def per_example(values: np.ndarray, x: np.ndarray, name: str) -> None:
    """`values` holds one entry per row of `x`."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per example), not shape {values.shape}")
    if len(values) != len(x):
        x_name = "x_test" if name == "y_test" else "x"
        raise ValueError(f"{name} has {len(values)} rows, {x_name} has {len(x)}")


def encode_labels(train: Any, test: Any) -> tuple[np.ndarray, np.ndarray, list]:
    """Labels as int64 0..K-1 in sorted order of the values seen (ints keep their order),
    and the values, in one vectorized pass."""
    train, test = np.asarray(train), np.asarray(test)
    names, codes = np.unique(np.concatenate([train, test]), return_inverse=True)
    codes = codes.astype(np.int64)
    return codes[: len(train)], codes[len(train) :], names.tolist()


def standardized(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits minus the training split's mean, over its standard deviation (1 for a
    constant column), as float32: the test rows tell the scaling nothing."""
    if x_train.dtype.kind != "f":
        raise ValueError(f"standardize: the features are {x_train.dtype} token ids, not numbers")
    mean = x_train.mean(axis=0, dtype=np.float64)
    scale = x_train.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    return tuple(((x - mean) / scale).astype(np.float32) for x in (x_train, x_test))


class ArraysOptions(BaseModel):
    """Which file(s) and which arrays in them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(description="an .npz file of named arrays, or an .npy file of x")
    x_key: str = Field("x", description="the .npz array of features")
    y_key: str = Field("y", description="the .npz array of labels")
    clients_key: str | None = Field(None, description="a client id per example (natural split)")
    x_test_key: str | None = Field(None, description="default: data.test_fraction of x held out")
    y_test_key: str | None = Field(None, description="the test labels (with x_test_key)")
    y_path: str | None = Field(None, description="an .npy file of the labels (path is .npy)")
    clients_path: str | None = Field(None, description="an .npy file of client ids")
    standardize: bool = Field(False, description="scale features by the training split's")

    @model_validator(mode="after")
    def _files(self) -> ArraysOptions:
        npz = self.path.endswith(".npz")
        if not npz and not self.path.endswith(".npy"):
            raise ValueError(f"path: {self.path!r} must be an .npz or .npy file")
        if npz and (self.y_path or self.clients_path):
            raise ValueError("y_path and clients_path are for .npy files: name keys of the .npz")
        if not npz and not self.y_path:
            raise ValueError("an .npy path holds x only: give y_path (and clients_path)")
        if not npz and (self.clients_key or self.x_test_key or self.y_test_key):
            raise ValueError("clients_key, x_test_key and y_test_key name arrays of an .npz path")
        if (self.x_test_key is None) != (self.y_test_key is None):
            raise ValueError("x_test_key and y_test_key go together")
        return self


def files(o: ArraysOptions) -> list[Path]:
    """The option's files, each checked to exist (relative to the current directory)."""
    paths = {"path": o.path, "y_path": o.y_path, "clients_path": o.clients_path}
    out = []
    for option, value in paths.items():
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ValueError(f"{option}: {value!r} is not a file")
            out.append(path)
    return out


def sha256(path: Path) -> str:
    """The hash of a file's bytes, read in blocks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_arrays(o: ArraysOptions) -> ArrayData:
    """The arrays the options name, from an .npz or from .npy files."""
    if o.path.endswith(".npy"):
        read = lambda p: np.load(Path(p).expanduser(), allow_pickle=False)  # noqa: E731
        return ArrayData(read(o.path), read(o.y_path), o.clients_path and read(o.clients_path))
    with np.load(Path(o.path).expanduser(), allow_pickle=False) as z:
        keys = {"x_key": o.x_key, "y_key": o.y_key, "clients_key": o.clients_key}
        keys |= {"x_test_key": o.x_test_key, "y_test_key": o.y_test_key}
        for option, key in keys.items():
            if key is not None and key not in z:
                raise ValueError(f"{option}: {key!r} is not in {o.path!r} (it has {z.files})")
        return ArrayData(*(None if key is None else z[key] for key in keys.values()))


def load(o: ArraysOptions, cfg: DataConfig, seed: int) -> Dataset:
    """The arrays of the files, split and cached on disk by the files' contents."""
    paths = files(o)
    if cfg.partitioner == "natural" and not (o.clients_key or o.clients_path):
        raise ValueError("partitioner 'natural' needs options.clients_key (or clients_path)")
    key = {  # everything the arrays depend on (a sweep over, say, alpha shares one entry)
        "format": 1,
        "kind": "arrays",
        "files": [sha256(p) for p in paths],
        "options": o.model_dump(),
        "natural_clients": cfg.num_clients if cfg.partitioner == "natural" else None,
        "test_fraction": cfg.test_fraction if o.x_test_key is None else None,
        "seed": seed,
    }
    build = lambda: dataset_from_arrays(read_arrays(o), cfg, seed, standardize=o.standardize)  # noqa: E731
    return cached(key, build)


DATASETS.register("arrays", DatasetSpec(ArraysOptions, load, natural=None), __doc__.splitlines()[0])
