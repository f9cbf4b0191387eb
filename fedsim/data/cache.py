"""Preprocessed datasets on disk, so the runs of a sweep, Ray's workers and the ClientApps of
one machine turn a dataset into arrays once, not once per process.

The cache directory is $FEDSIM_CACHE, else $XDG_CACHE_HOME/fedsim, else ~/.cache/fedsim; an
entry is one .npz named by the hash of everything the arrays depend on (the source's
fingerprint, the options, the split settings, the seed). Entries are written whole (a
temporary file renamed into place), so processes that share the directory never read half
an entry; one that cannot be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.base import Dataset

ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_dir() -> Path:
    """Where preprocessed datasets are kept."""
    if root := os.environ.get("FEDSIM_CACHE"):
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fedsim"


def entry_path(key: dict[str, Any]) -> Path:
    """The file of the dataset that `key` (JSON-able) describes."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "datasets" / f"{digest}.npz"


def cached(key: dict[str, Any], build: Callable[[], Dataset]) -> Dataset:
    """The dataset of `key` from the cache, or `build()` and kept there."""
    path = entry_path(key)
    try:
        return read(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # absent or unreadable
        pass
    dataset = build()
    write(path, dataset)
    return dataset


def write(path: Path, ds: Dataset) -> None:
    arrays = {name: getattr(ds, name) for name in ARRAYS}
    if ds.client_splits is not None:  # one flat index array and each client's offset
        arrays["splits"] = np.concatenate([np.asarray(s, np.int64) for s in ds.client_splits])
        arrays["offsets"] = np.cumsum([0] + [len(s) for s in ds.client_splits])
    header = {"num_classes": ds.num_classes, "meta": ds.meta}
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path) -> Dataset:
    with np.load(path) as z:
        header = json.loads(z["header"].tobytes())
        splits = None
        if "splits" in z:
            flat, offsets = z["splits"], z["offsets"]
            splits = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return Dataset(
            *(z[name] for name in ARRAYS),
            num_classes=header["num_classes"],
            client_splits=splits,
            meta=header["meta"],
        )
