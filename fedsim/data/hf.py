"""The `hf` dataset kind: a Hugging Face dataset by name (`uoft-cs/cifar10`,
`flwrlabs/femnist`, `flwrlabs/shakespeare`, `nyu-mll/glue` with subset `sst2`, ...) loaded
through Flower Datasets' `FederatedDataset` as a user with network access would, or a local
copy: a directory written by `datasets`' `save_to_disk`, or parquet / csv / tsv files.

Columns are turned into fedsim's flat arrays as the options declare: images scaled and
normalised per channel (C*H*W features, `meta["image_shape"]`), text into word or character
ids of a vocabulary built on the training split (padded to `max_len`, `meta["vocab"]`), a
table's number columns (`feature_columns`, or every column but the label and client ids)
stacked as float32 features, labels into 0..K-1 (strings by their sorted order,
`meta["labels"]`); features optionally standardized by the training split's mean and scale.
With `partitioner = "natural"` each client is one value of `client_column` (FEMNIST's
writer, Shakespeare's speaking role), split as flwr-datasets' `NaturalIdPartitioner` splits,
and only the chosen clients' rows are encoded; without a test split, `data.test_fraction` of
each client's examples is held out (LEAF's split). iid, dirichlet and shards split the
examples by label as for every dataset. The arrays are kept in fedsim's on-disk cache
(fedsim.data.cache), keyed by the source's fingerprint, the options and the seed: a sweep
encodes a dataset once.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsim.data.arrays import check_finite, encode_labels, standardized
from fedsim.data.base import DATASETS, PAD, Dataset, DatasetSpec
from fedsim.data.cache import cached
from fedsim.data.config import DataConfig
from fedsim.data.partition import arrow_column, split_rows

# the columns of the datasets papers use, so a scenario needs only the name
KNOWN: dict[str, dict[str, Any]] = {
    "uoft-cs/cifar10": {"input_column": "img", "test_split": "test"},
    "flwrlabs/femnist": {
        "input_column": "image",
        "label_column": "character",
        "client_column": "writer_id",
    },
    "flwrlabs/shakespeare": {
        "input_column": "x",
        "label_column": "y",
        "client_column": "character_id",
        "text": "chars",
        "max_len": 80,
    },
    "nyu-mll/glue": {"input_column": "sentence", "test_split": "validation"},  # sst2: labelled
}
FILES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}  # local files -> datasets builder


class HFOptions(BaseModel):
    """Which dataset, which splits and columns, and how its inputs become arrays."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(description="a Hub name, or a local save_to_disk directory or data files")
    subset: str | None = Field(None, description="the configuration, e.g. 'sst2' of nyu-mll/glue")
    train_split: str = Field("train", description="the split the clients train on")
    test_split: str | None = Field(None, description="default: data.test_fraction of train")
    input_column: str | None = Field(
        None, description="the input: images, text or numbers (default: 'image' if present)"
    )
    feature_columns: list[str] | None = Field(
        None, min_length=1, description="number columns stacked as features (a table)"
    )
    label_column: str = Field("label", description="the column of class labels")
    client_column: str | None = Field(None, description="the natural client id column")
    text: Literal["words", "chars"] = Field("words", description="how a text column is split")
    max_len: int = Field(64, ge=1, description="ids kept per text (padded with 0)")
    image_scale: float = Field(1 / 255, gt=0, description="pixel values are multiplied by it")
    mean: list[float] | None = Field(None, description="per channel, subtracted after scaling")
    std: list[float] | None = Field(None, description="per channel, divided by after the mean")
    max_examples: int | None = Field(None, ge=10, description="a seeded subsample of train")
    standardize: bool = Field(False, description="scale features by the training split's")

    @model_validator(mode="before")
    @classmethod
    def _known_defaults(cls, raw: Any) -> Any:
        """A known dataset's columns unless the scenario names others."""
        if isinstance(raw, dict) and raw.get("name") in KNOWN:
            return KNOWN[raw["name"]] | raw
        return raw

    @model_validator(mode="after")
    def _one_input(self) -> HFOptions:
        if self.input_column and self.feature_columns:
            raise ValueError("input_column and feature_columns exclude each other: give one")
        return self

    @model_validator(mode="after")
    def _channels(self) -> HFOptions:
        if (self.mean is None) != (self.std is None) or (
            self.mean and len(self.mean) != len(self.std)
        ):
            raise ValueError("mean and std go together, one value per channel each")
        if self.std and min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self


def read_splits(o: HFOptions) -> tuple[Any, Any | None]:
    """The train split and the test split (None when the dataset has none named) as
    `datasets.Dataset`s."""
    import datasets  # heavy (~2 s): only hf scenarios pay for it
    from flwr_datasets import FederatedDataset

    path = Path(o.name).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            return loaded, None
        return loaded[o.train_split], loaded[o.test_split] if o.test_split else None
    if path.exists():  # data files: one file is the train split, a directory names its splits
        kwargs = local_files(path)
    elif o.name.startswith((".", "/", "~")) or Path(o.name).suffix in FILES:
        raise ValueError(f"name: {o.name!r} is not a file or directory")
    else:
        kwargs = {"dataset": o.name, "subset": o.subset}
    splits = [o.train_split, *([o.test_split] if o.test_split else [])]
    # the splits as stored (FederatedDataset shuffles by default): fedsim splits by its seed
    fds = FederatedDataset(partitioners={o.train_split: 1}, shuffle=False, **kwargs)
    try:
        return tuple(fds.load_split(s) for s in splits) + ((None,) if len(splits) == 1 else ())
    except (ConnectionError, FileNotFoundError) as e:
        raise ValueError(
            f"name: {o.name!r} cannot be loaded here ({type(e).__name__}): a Hub dataset needs"
            " network access; give a local path (a save_to_disk directory or data files)"
        ) from None


def local_files(path: Path) -> dict[str, Any]:
    """FederatedDataset arguments for parquet / csv / tsv files (plain or .gz)."""

    def kind(p: Path) -> str | None:
        return FILES.get(Path(p.name.removesuffix(".gz")).suffix)

    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if kind(p))
    kinds = {kind(p) for p in files}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f"name: {str(path)!r} needs .parquet, .csv or .tsv files of one kind")
    (builder,) = kinds
    if path.is_file():
        data_files: Any = {"train": str(path)}
    else:  # train.parquet, test.parquet, ...: a split per file stem
        data_files = {p.name.split(".")[0]: str(p) for p in files}
    kwargs: dict[str, Any] = {"dataset": builder, "data_files": data_files}
    if any(p.name.removesuffix(".gz").endswith(".tsv") for p in files):
        kwargs |= {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return kwargs


def features(values: Any, o: HFOptions, vocab: list[str] | None) -> tuple[np.ndarray, dict]:
    """A column as (n, features) float32 and what it was: images, text ids or numbers."""
    first = values[0]
    if hasattr(first, "convert"):  # PIL images: (C, H, W) per example
        pixels = np.stack([np.asarray(v, dtype=np.float32) for v in values]) * o.image_scale
        # grayscale (n, H, W) -> (n, 1, H, W); colour (n, H, W, C) -> (n, C, H, W)
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)
        if o.mean is not None:
            if len(o.mean) != pixels.shape[1]:
                raise ValueError(f"mean: {len(o.mean)} values for {pixels.shape[1]} channels")
            shape = (1, -1, 1, 1)
            pixels = (pixels - np.reshape(o.mean, shape)) / np.reshape(o.std, shape)
        shape = list(pixels.shape[1:])
        return pixels.reshape(len(values), -1).astype(np.float32), {"image_shape": shape}
    if isinstance(first, str):
        index = {w: i for i, w in enumerate(vocab)}
        out = np.full((len(values), o.max_len), PAD, dtype=np.int64)
        for r, text in enumerate(values):
            ids = [index[t] for t in tokens(text, o.text) if t in index][: o.max_len]
            out[r, : len(ids)] = ids
        return out, {"vocab": vocab}
    numbers = np.stack(values) if values.dtype == object else values  # a list per example
    return np.asarray(numbers, dtype=np.float32).reshape(len(values), -1), {}


def tokens(text: str, how: str) -> list[str]:
    return list(text) if how == "chars" else text.split()


def build_vocab(texts: list[str], how: str) -> list[str]:
    counts = Counter(t for s in texts for t in tokens(s, how))
    return ["", *sorted(counts, key=lambda t: (-counts[t], t))]


def column(ds: Any, name: str) -> Any:
    """A column in one read: images decoded (PIL, one by one as decoding goes), anything else
    a NumPy array through Arrow."""
    from datasets import Image

    if isinstance(ds.features[name], Image):
        return ds[name]
    return arrow_column(ds, name).to_numpy()


def input_columns(o: HFOptions, columns: list[str]) -> list[str]:
    """The columns that make the features: input_column, feature_columns, else the 'image'
    column, else every column but the label and the client ids."""
    if o.input_column or o.feature_columns:
        return [o.input_column] if o.input_column else o.feature_columns
    if "image" in columns:
        return ["image"]
    return [c for c in columns if c not in (o.label_column, o.client_column)]


def table(ds: Any, columns: list[str], o: HFOptions) -> np.ndarray:
    """Number columns stacked as (n, len(columns)) float32 features."""
    out = np.empty((len(ds), len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        values = column(ds, name)
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "biuf":
            raise ValueError(
                f"column {name!r} of {o.name!r} does not hold numbers: name the number columns"
                " in options.feature_columns"
            )
        out[:, j] = values
    return out


def load(o: HFOptions, cfg: DataConfig, seed: int) -> Dataset:
    train, test = read_splits(o)
    inputs = input_columns(o, train.column_names)
    if not inputs:
        raise ValueError(f"{o.name!r} has no column besides the label and client ids")
    for col in filter(None, (*inputs, o.label_column, o.client_column)):
        if col not in train.column_names:
            raise ValueError(f"column {col!r} is not in {o.name!r} (it has {train.column_names})")
    if cfg.partitioner == "natural" and not o.client_column:
        raise ValueError("partitioner 'natural' needs options.client_column (the client id)")
    key = {  # everything the arrays depend on (a sweep over, say, alpha shares one entry)
        "format": 1,
        "train": train._fingerprint,  # datasets' hash of the data and its transforms
        "test": test._fingerprint if test is not None else None,
        "options": o.model_dump(),
        "natural_clients": cfg.num_clients if cfg.partitioner == "natural" else None,
        "test_fraction": cfg.test_fraction if test is None else None,
        "seed": seed,
    }
    return cached(key, lambda: preprocess(train, test, inputs, o, cfg, seed))


def preprocess(
    train: Any, test: Any | None, inputs: list[str], o: HFOptions, cfg: DataConfig, seed: int
) -> Dataset:
    """The splits as arrays: subsampled, natural clients chosen (only their rows are kept),
    a test set held out where the dataset has none, inputs and labels encoded."""
    rng = np.random.default_rng(seed)
    if o.max_examples is not None and o.max_examples < len(train):
        train = train.select(np.sort(rng.permutation(len(train))[: o.max_examples]))
    ids = column(train, o.client_column) if cfg.partitioner == "natural" else None
    rows = split_rows(ids, len(train), cfg, seed, rng, held_out=test is None)
    if rows.test is not None:
        test = train.select(rows.test)
    if len(rows.train) < len(train):
        train = train.select(rows.train)  # positions in it from here on
    x_train, x_test, meta = encode_inputs(train, test, inputs, o)
    if o.standardize:
        x_train, x_test = standardized(x_train, x_test)
    y_train, y_test, names = encode_labels(
        column(train, o.label_column), column(test, o.label_column)
    )
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        num_classes=len(names),
        client_splits=rows.clients,
        meta={**meta, "labels": names, "name": o.name},
    )


def encode_inputs(
    train: Any, test: Any, inputs: list[str], o: HFOptions
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Both splits' features: number columns stacked, or one input column as `features`
    makes them (a vocabulary built on the training split); finite float32 or int64 ids."""
    if o.feature_columns or len(inputs) > 1:
        x_train, x_test, meta = table(train, inputs, o), table(test, inputs, o), {}
    else:
        x_in = column(train, inputs[0])
        vocab = build_vocab(x_in, o.text) if isinstance(x_in[0], str) else None
        x_train, meta = features(x_in, o, vocab)
        x_test, _ = features(column(test, inputs[0]), o, vocab)
    if x_train.dtype.kind == "f":
        check_finite(x_train, "the training split")
        check_finite(x_test, "the test split")
    return x_train, x_test, meta


DATASETS.register(
    "hf",
    DatasetSpec(HFOptions, load, natural=None),
    "a Hugging Face dataset: a Hub name, a save_to_disk directory, or parquet/csv/tsv files",
)
