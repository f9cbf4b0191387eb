"""Small model zoo and the flat-vector view every algorithm works on.

Models are parameter-only (no buffers), so a model is exactly one float32
vector of d numbers: that vector is what travels and what the methods update.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from torch import nn

from fedsim.registry import Registry

MODELS: Registry = Registry("model")


class ModelConfig(BaseModel):
    """The `[model]` table of a scenario."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Annotated[str, AfterValidator(MODELS.check)] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64])
    bias: bool = True
    embedding: int = Field(64, ge=1, description="text_bow: the width of a word's vector")
    buckets: int = Field(32768, ge=2, description="text_bow: word ids are taken mod buckets")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError(f"{v} must hold positive layer widths")
        return v


def output_dim(num_classes: int) -> int:
    """Binary tasks use one logit (BCE-with-logits), multiclass one logit per class."""
    return 1 if num_classes == 2 else num_classes


@MODELS("logreg", "linear model: logistic / softmax regression")
def logreg(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, output_dim(num_classes), bias=cfg.bias)


@MODELS("mlp", "multilayer perceptron with ReLU (widths from `hidden`)")
def mlp(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for h in cfg.hidden:
        layers += [nn.Linear(width, h, bias=cfg.bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, output_dim(num_classes), bias=cfg.bias))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear head for square one-channel images (8x8 digits)."""

    def __init__(self, side: int, num_classes: int, bias: bool) -> None:
        super().__init__()
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * (side // 2) ** 2, output_dim(num_classes), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, self.side, self.side)))


@MODELS("cnn", "small CNN for square one-channel images such as 8x8 digits")
def cnn(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise ValueError(f"model.name: 'cnn' needs square images, got {in_features} features")
    return SmallCNN(side, num_classes, cfg.bias)


def image_shape(in_features: int) -> tuple[int, int]:
    """(channels, side) of square one- or three-channel images flattened to `in_features`."""
    for channels in (1, 3):
        side = math.isqrt(in_features // channels)
        if channels * side * side == in_features:
            return channels, side
    raise ValueError(f"{in_features} features are not square 1- or 3-channel images")


class FedAvgCNN(nn.Module):
    """The CNN of McMahan et al. (2017): two 5x5 convolutions (32 and 64 channels), each with
    2x2 max pooling, a 512-unit layer and the output (1,690,046 parameters for 28x28 one-
    channel images and 62 classes, as FEMNIST; 2,156,490 for 32x32 colour and 10, CIFAR-10)."""

    def __init__(self, channels: int, side: int, num_classes: int, bias: bool) -> None:
        super().__init__()
        self.shape = (channels, side, side)
        self.layers = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (side // 4) ** 2, 512, bias=bias),
            nn.ReLU(),
            nn.Linear(512, output_dim(num_classes), bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.view(-1, *self.shape))


@MODELS("fedavg_cnn", "the FedAvg paper's CNN for 28x28 or 32x32 images, 1 or 3 channels")
def fedavg_cnn(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    try:
        channels, side = image_shape(in_features)
    except ValueError as e:
        raise ValueError(f"model.name: 'fedavg_cnn' needs images: {e}") from None
    return FedAvgCNN(channels, side, num_classes, cfg.bias)


class TextBoW(nn.Module):
    """A text classifier over word ids: the mean of the words' vectors (id 0 pads and is left
    out; ids beyond `buckets` share vectors, the hashing trick), hidden ReLU layers, the
    output. fastText's shape, small enough to federate."""

    takes_ids = True  # its inputs are token ids, not features

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.buckets = cfg.buckets
        self.embed = nn.Embedding(cfg.buckets, cfg.embedding)
        nn.init.uniform_(self.embed.weight, -0.5 / cfg.embedding, 0.5 / cfg.embedding)  # fastText's
        layers: list[nn.Module] = []
        width = cfg.embedding
        for h in cfg.hidden:
            layers += [nn.Linear(width, h, bias=cfg.bias), nn.ReLU()]
            width = h
        self.head = nn.Sequential(*layers, nn.Linear(width, output_dim(num_classes), bias=cfg.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        words = (ids != 0).unsqueeze(-1).to(self.embed.weight.dtype)
        vectors = self.embed(ids % self.buckets) * words
        mean = vectors.sum(-2) / words.sum(-2).clamp(min=1.0)
        return self.head(mean)


@MODELS("text_bow", "mean of word vectors and an MLP: a text classifier over word ids")
def text_bow(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return TextBoW(cfg, num_classes)


def takes_ids(model: nn.Module) -> bool:
    """Whether a model reads token ids (text_bow) rather than float features."""
    return getattr(model, "takes_ids", False)


def build_model(cfg: ModelConfig, in_features: int, num_classes: int, seed: int) -> nn.Module:
    """The model with parameters initialised from `seed` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS.get(cfg.name)(cfg, in_features, num_classes)
    if any(True for _ in model.buffers()):
        raise ValueError(f"model {cfg.name!r} has buffers; fedsim models must be parameter-only")
    return model


# Batching a cohort with vmap pays on a CPU while a client's step is small: measured on a
# 2-core CPU it is 3-4x faster than client by client at 10k parameters, still ahead at
# ~170k, and 5x slower at 1M (one client's products of separate weights already fill the
# cores; large stacked tensors defeat the allocator's reuse). Above this, a CPU cohort runs
# its clients side by side on single-threaded workers instead (clients/objective.py).
VMAP_PARAMS = 150_000


def flat_params(model: nn.Module) -> torch.Tensor:
    """A fresh flat copy of the model's parameters."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def bind(model: nn.Module, x: torch.Tensor) -> list[nn.Parameter]:
    """Make the model's parameters views into the flat vector `x` (updates to x move the model)."""
    params = list(model.parameters())
    offset = 0
    for p in params:
        n = p.numel()
        p.data = x[offset : offset + n].view_as(p)
        offset += n
    if offset != x.numel():
        raise ValueError(f"vector has {x.numel()} entries, model has {offset} parameters")
    return params


def loss_fn(num_classes: int):
    """Loss matching `output_dim` (mean unless `reduction="none"`): BCE-with-logits for
    binary, cross-entropy otherwise."""
    if num_classes == 2:
        return lambda out, y, reduction="mean": nn.functional.binary_cross_entropy_with_logits(
            out.squeeze(-1), y.to(out.dtype), reduction=reduction
        )
    return nn.functional.cross_entropy


def predict(out: torch.Tensor) -> torch.Tensor:
    """Class predictions from logits (one logit means binary)."""
    return (out.squeeze(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(-1)
