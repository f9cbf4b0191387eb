"""sklearn's bundled 8x8 digits (no download): 64 features in [0, 1], 10 classes."""

from __future__ import annotations

import numpy as np

from fedsim.data.base import DATASETS, Dataset, DatasetSpec, NoOptions
from fedsim.data.config import DataConfig


def load(options: NoOptions, cfg: DataConfig, seed: int) -> Dataset:
    """Scale pixels (0..16) to [0, 1] and hold out a stratified `test_fraction`."""
    from sklearn.datasets import load_digits  # here: a scenario that only validates needs none
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32),
        y.astype(np.int64),
        test_size=cfg.test_fraction,
        stratify=y,
        random_state=seed,
    )
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10)


DATASETS.register(
    "digits",
    DatasetSpec(NoOptions, load, natural=False),
    "sklearn 8x8 handwritten digits: 1797 images, 64 features, 10 classes",
)
