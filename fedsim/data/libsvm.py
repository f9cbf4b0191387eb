"""LIBSVM/svmlight text files (plain or .gz) read into dense float32 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from fedsim.data.base import DATASETS, Dataset, DatasetSpec, open_text
from fedsim.data.config import DataConfig


class LibsvmOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """Train file, optional test file (else a seeded `test_fraction` split), feature count."""

    path: str = Field(description="the training file (plain or .gz)")
    test_path: str | None = Field(
        None, description="the test file (default: a seeded data.test_fraction of path's rows)"
    )
    n_features: int | None = Field(
        None, ge=1, description="features (default: the largest feature index in the files)"
    )


def _read_raw(path: str | Path, n_features: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Dense features and the labels as written (float64); lines are `label idx:val ...`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LIBSVM file not found: {path}")
    labels: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    with open_text(path) as lines:
        for line in lines:
            tokens = line.split("#", 1)[0].split()
            if not tokens:
                continue
            for token in tokens[1:]:
                index, _, value = token.partition(":")
                rows.append(len(labels))
                cols.append(int(index) - 1)  # LIBSVM indices are 1-based
                vals.append(float(value))
            labels.append(float(tokens[0]))
    width = max(cols, default=-1) + 1
    if min(cols, default=0) < 0:
        raise ValueError(f"{path}: feature indices are 1-based, found index 0 or below")
    if n_features is not None and width > n_features:
        raise ValueError(f"{path}: feature index {width} exceeds n_features={n_features}")
    x = np.zeros((len(labels), n_features or width), dtype=np.float32)
    x[rows, cols] = vals
    return x, np.asarray(labels)


def read_libsvm(path: str | Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32 X and int64 labels 0..C-1 in sorted label order (so -1/+1 become 0/1)."""
    x, raw = _read_raw(path, n_features)
    return x, np.unique(raw, return_inverse=True)[1].astype(np.int64)


def load(options: LibsvmOptions, cfg: DataConfig, seed: int) -> Dataset:
    """Read the file(s); labels are encoded jointly so train and test agree."""
    x_train, raw_train = _read_raw(options.path, options.n_features)
    if options.test_path is None:
        from sklearn.model_selection import train_test_split  # here: slow to import

        x_train, x_test, raw_train, raw_test = train_test_split(
            x_train, raw_train, test_size=cfg.test_fraction, random_state=seed
        )
    elif options.test_path == options.path:  # every row trains and is evaluated: read once
        x_test, raw_test = x_train, raw_train
    else:
        x_test, raw_test = _read_raw(options.test_path, options.n_features)
        width = max(x_train.shape[1], x_test.shape[1])
        x_train, x_test = (np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in (x_train, x_test))
    classes = np.unique(np.concatenate([raw_train, raw_test]))
    if len(classes) < 2:
        raise ValueError(f"{options.path}: need at least two distinct labels, found {classes}")
    y_train, y_test = (
        np.searchsorted(classes, raw).astype(np.int64) for raw in (raw_train, raw_test)
    )
    return Dataset(x_train, y_train, x_test, y_test, num_classes=len(classes))


DATASETS.register(
    "libsvm",
    DatasetSpec(LibsvmOptions, load, natural=False),
    "a LIBSVM-format file (plain or .gz) given by options.path",
)
