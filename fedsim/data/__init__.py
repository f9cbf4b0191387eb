"""Datasets, their registry, the `[data]` config, and client partitioning.

Importing this package registers the built-in datasets: digits, logreg, synthetic, libsvm,
sentences, text_tsv, hf, arrays.
"""

from fedsim.data import arrays, digits, hf, libsvm, logreg, sentences, synthetic, text  # noqa: F401
from fedsim.data.arrays import ArrayData, dataset_from_arrays
from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.config import DataConfig
from fedsim.data.libsvm import read_libsvm
from fedsim.data.loader import client_data, load_dataset, partition_indices
from fedsim.data.logreg import logreg_loss_grad, logreg_optimum

__all__ = [
    "DATASETS",
    "ArrayData",
    "DataConfig",
    "Dataset",
    "DatasetSpec",
    "client_data",
    "dataset_from_arrays",
    "load_dataset",
    "logreg_loss_grad",
    "logreg_optimum",
    "partition_indices",
    "read_libsvm",
]
