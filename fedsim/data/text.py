"""Text classification from tab-separated files (GLUE's layout: a header row, a `sentence`
and a `label` column; plain or .gz), e.g. SST-2 in ../shared/data/sst2. Like `sentences`,
`x` holds word ids into `meta["vocab"]` (words split on spaces, as GLUE tokenized them), so
a backbone's own tokenizer reads the sentence back as text."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from fedsim.data.base import DATASETS, PAD, Dataset, DatasetSpec, open_text
from fedsim.data.config import DataConfig


class TextOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """The training and test files, their columns, and an optional seeded subsample."""

    path: str = Field(description="training TSV (plain or .gz)")
    test_path: str = Field(description="test TSV: what accuracy is reported on")
    text_column: str = Field("sentence", description="the column of sentences")
    label_column: str = Field("label", description="the column of integer labels")
    max_words: int = Field(64, ge=1, description="words kept per sentence")
    train_size: int | None = Field(None, ge=10, description="a seeded subsample of training")


def read_tsv(path: str | Path, text: str, label: str) -> tuple[list[str], np.ndarray]:
    """Sentences and integer labels of a TSV file with a header row."""
    with open_text(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or text not in rows[0] or label not in rows[0]:
        found = list(rows[0]) if rows else []
        raise ValueError(f"{path}: needs columns {text!r} and {label!r}, found {found}")
    return [r[text] for r in rows], np.array([int(r[label]) for r in rows], dtype=np.int64)


def word_ids(sentences: list[str], index: dict[str, int], width: int) -> np.ndarray:
    """(n, width) word ids, padded with PAD; words outside the vocabulary are dropped."""
    out = np.full((len(sentences), width), PAD, dtype=np.int64)
    for r, s in enumerate(sentences):
        ids = [index[w] for w in s.split() if w in index][:width]
        out[r, : len(ids)] = ids
    return out


def load(options: TextOptions, cfg: DataConfig, seed: int) -> Dataset:
    train, y_train = read_tsv(options.path, options.text_column, options.label_column)
    test, y_test = read_tsv(options.test_path, options.text_column, options.label_column)
    if options.train_size is not None and options.train_size < len(train):
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[: options.train_size])
        train, y_train = [train[i] for i in keep], y_train[keep]
    counts = Counter(w for s in train for w in s.split())
    vocab = ["", *sorted(counts, key=lambda w: (-counts[w], w))]  # training words only
    index = {w: i for i, w in enumerate(vocab) if i != PAD}
    classes = np.unique(np.concatenate([y_train, y_test]))
    if not np.array_equal(classes, np.arange(len(classes))) or len(classes) < 2:
        raise ValueError(f"{options.path}: labels must be 0..C-1 with C >= 2, found {classes}")
    x_train = word_ids(train, index, options.max_words)
    x_test = word_ids(test, index, options.max_words)
    meta = {"vocab": vocab}
    return Dataset(x_train, y_train, x_test, y_test, num_classes=len(classes), meta=meta)


DATASETS.register(
    "text_tsv",
    DatasetSpec(TextOptions, load, natural=False),
    "sentences and labels from TSV files (GLUE layout, e.g. SST-2): options.path, test_path",
)
