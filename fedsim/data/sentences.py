"""A generated text-classification task with a genuine signal (for split learning, P3EFT).

Each sentence is `length` words: filler words drawn from a Zipf law, and `cues` sentiment
words at random positions, each from the sentence's own class with probability `cue_purity`
and from another class otherwise. The label is the class that drew the sentence, so a model
must find the cue words among the fillers and count them; with the defaults (3 cues, purity
0.85) the Bayes accuracy is about 94% for 2 classes. `x` holds word ids into `meta["vocab"]`,
which a backbone's tokenizer turns into tokens (or text: `" ".join(vocab[i] for i in row)`).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, field_validator

from fedsim.data.base import DATASETS, Dataset, DatasetSpec
from fedsim.data.config import DataConfig

CUE_WORDS = (
    ("bad", "awful", "poor", "terrible", "boring", "dull", "weak", "clumsy"),
    ("good", "great", "superb", "lovely", "wonderful", "fine", "brilliant", "moving"),
    ("okay", "average", "plain", "fair", "mixed", "passable", "modest", "uneven"),
)


class SentenceOptions(BaseModel, extra="forbid", allow_inf_nan=False):
    """Classes (2: negative/positive, 3: adds neutral), sizes, and how clear the signal is."""

    classes: int = Field(
        2, ge=2, le=len(CUE_WORDS), description="2: negative and positive; 3 adds neutral"
    )
    train_size: int = Field(4000, ge=10, description="training sentences")
    test_size: int = Field(1000, ge=10, description="test sentences")
    length: int = Field(16, ge=2, description="words per sentence")
    cues: int = Field(3, ge=1, description="sentiment words per sentence")
    cue_purity: float = Field(0.85, gt=0, le=1, description="P(a cue word is of its class)")
    fillers: int = Field(200, ge=1, description="distinct filler words (Zipf frequencies)")
    class_prior: list[float] | None = Field(None, description="class probabilities (uniform)")

    @field_validator("class_prior")
    @classmethod
    def _a_distribution(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (min(v) <= 0 or abs(sum(v) - 1) > 1e-6):
            raise ValueError(f"{v} must be positive numbers that sum to 1")
        return v


def vocabulary(options: SentenceOptions) -> list[str]:
    """Padding ("", id 0, never drawn), the cue words of every class in use, the fillers."""
    cues = [w for words in CUE_WORDS[: options.classes] for w in words]
    return ["", *cues, *(f"w{i}" for i in range(options.fillers))]


def sentences(options: SentenceOptions, n: int, rng: np.random.Generator):
    """`n` sentences as word ids (n, length) and their labels."""
    k, per_class = options.classes, len(CUE_WORDS[0])
    prior = options.class_prior or [1.0 / k] * k
    if len(prior) != k:
        raise ValueError(f"class_prior has {len(prior)} entries for {k} classes")
    y = rng.choice(k, size=n, p=prior)
    zipf = 1.0 / np.arange(1, options.fillers + 1)
    x = k * per_class + rng.choice(options.fillers, size=(n, options.length), p=zipf / zipf.sum())
    pure = rng.random((n, options.cues)) < options.cue_purity
    other = (y[:, None] + rng.integers(1, k, size=(n, options.cues))) % k
    cue_class = np.where(pure, y[:, None], other)
    cue_word = cue_class * per_class + rng.integers(0, per_class, size=(n, options.cues))
    slots = np.argsort(rng.random((n, options.length)), axis=1)[:, : options.cues]
    np.put_along_axis(x, slots, cue_word, axis=1)
    return 1 + x.astype(np.int64), y.astype(np.int64)  # id 0 pads, as in every text dataset


def load(options: SentenceOptions, cfg: DataConfig, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    x_train, y_train = sentences(options, options.train_size, rng)
    x_test, y_test = sentences(options, options.test_size, rng)
    meta = {"vocab": vocabulary(options)}
    return Dataset(x_train, y_train, x_test, y_test, num_classes=options.classes, meta=meta)


DATASETS.register(
    "sentences",
    DatasetSpec(SentenceOptions, load, natural=False),
    "generated sentences: sentiment cue words among Zipf fillers, 2 or 3 classes (word ids)",
)
