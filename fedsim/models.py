"""Small model zoo and the flat-vector view every algorithm works on.

Models are parameter-only (no buffers), so a model is exactly one float32
vector of d numbers: that vector is what travels and what the methods update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from torch import nn

from fedsim.data.base import PAD
from fedsim.registry import Registry

MODELS: Registry = Registry("model")
Builder = Callable[["ModelConfig", int, int], nn.Module]


class ModelConfig(BaseModel):
    """The `[model]` table of a scenario."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: Annotated[str, AfterValidator(MODELS.check)] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64])
    bias: bool = True
    embedding: int = Field(64, ge=1, description="text_bow, char_lstm: a token's vector width")
    buckets: int = Field(
        32768, ge=2, description="text_bow, char_lstm: ids are taken mod buckets (the table size)"
    )
    depth: int = Field(20, ge=8, description="resnet: 6n+2 layers (8, 14, 20, 32, 44, 56)")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError(f"{v} must hold positive layer widths")
        return v

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, v: int) -> int:
        if (v - 2) % 6:
            raise ValueError(f"{v} is not 6n+2 (a CIFAR ResNet: 8, 14, 20, 32, 44, 56)")
        return v


@dataclass(frozen=True)
class Example:
    """The input a model's parameter count is quoted for in `fedsim list`."""

    what: str
    in_features: int
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)


EXAMPLES: dict[str, Example] = {}


def model(name: str, doc: str, example: Example) -> Callable[[Builder], Builder]:
    """Register a model builder `(cfg, in_features, num_classes) -> nn.Module`."""

    def deco(build: Builder) -> Builder:
        EXAMPLES[name] = example
        return MODELS.register(name, build, doc)

    return deco


def example_parameters(name: str) -> tuple[int, Example]:
    """The parameter count of model `name` on its example input (built on the meta device)."""
    ex = EXAMPLES[name]
    with torch.device("meta"):
        m = MODELS.get(name)(ModelConfig(name=name, **ex.config), ex.in_features, ex.num_classes)
    return sum(p.numel() for p in m.parameters()), ex


def output_dim(num_classes: int) -> int:
    """Binary tasks use one logit (BCE-with-logits), multiclass one logit per class."""
    return 1 if num_classes == 2 else num_classes


@model("logreg", "linear model: logistic / softmax regression", Example("8x8 digits", 64, 10))
def logreg(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, output_dim(num_classes), bias=cfg.bias)


@model(
    "mlp", "multilayer perceptron with ReLU (widths from `hidden`)", Example("8x8 digits", 64, 10)
)
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


@model(
    "cnn",
    "small CNN for square one-channel images such as 8x8 digits",
    Example("8x8 digits", 64, 10),
)
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


def images_for(model_name: str, in_features: int) -> tuple[int, int]:
    """image_shape, or the error a scenario shows when the data are not images."""
    try:
        return image_shape(in_features)
    except ValueError as e:
        raise ValueError(f"model.name: {model_name!r} needs images: {e}") from None


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


@model(
    "fedavg_cnn",
    "the FedAvg paper's CNN for 28x28 or 32x32 images, 1 or 3 channels",
    Example("FEMNIST, 28x28, 62 classes", 784, 62),
)
def fedavg_cnn(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return FedAvgCNN(*images_for(cfg.name, in_features), num_classes, cfg.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a shortcut (a 1x1 convolution where the shape
    changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.GroupNorm(GROUPS, cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.GroupNorm(GROUPS, cout),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(GROUPS, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


GROUPS = 2  # GroupNorm's groups, as Hsieh et al. (2020) used for non-IID clients


class ResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers: three stages of n basic blocks at 16, 32 and 64
    channels, global average pooling, the output) with GroupNorm in place of BatchNorm: no
    running statistics (a fedsim model is parameters only), and the normalisation that holds
    up when clients' data differ (Hsieh et al., 2020)."""

    def __init__(self, channels: int, side: int, depth: int, num_classes: int) -> None:
        super().__init__()
        self.shape = (channels, side, side)
        n = (depth - 2) // 6
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 16, 3, 1, 1, bias=False),
            nn.GroupNorm(GROUPS, 16),
            nn.ReLU(),
        ]
        width = 16
        for stage, out in enumerate((16, 32, 64)):
            for block in range(n):
                layers.append(BasicBlock(width, out, 2 if stage and not block else 1))
                width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, output_dim(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.shape)))


@model(
    "resnet",
    "CIFAR ResNet (depth 6n+2) with GroupNorm, for 1- or 3-channel square images",
    Example("CIFAR-10, 32x32x3, depth 20", 3072, 10),
)
def resnet(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return ResNet(*images_for(cfg.name, in_features), cfg.depth, num_classes)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: character vectors, stacked LSTM layers (widths from
    `hidden`), the output read at the last id before the padding (the next character, for
    Shakespeare). Ids are taken mod `buckets`."""

    takes_ids = True
    vmaps = False  # torch has no vmap rule for its fused LSTM: a cohort runs client by client

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.buckets = cfg.buckets
        self.embed = nn.Embedding(cfg.buckets, cfg.embedding)
        widths = [cfg.embedding, *cfg.hidden]
        self.lstms = nn.ModuleList(
            nn.LSTM(a, b, batch_first=True) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], output_dim(num_classes), bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        seq = self.embed(ids % self.buckets)
        for lstm in self.lstms:
            seq, _ = lstm(seq)
        positions = torch.arange(ids.shape[-1], device=ids.device)
        last = torch.where(ids != PAD, positions, 0).amax(-1).view(-1, 1, 1)  # the last real id
        return self.head(seq.gather(-2, last.expand(-1, 1, seq.shape[-1])).squeeze(-2))


@model(
    "char_lstm",
    "LEAF's character LSTM (embedding, LSTM layers of widths `hidden`) over ids",
    Example(
        "Shakespeare (LEAF: 8 + 2x256, 80 chars)",
        80,
        80,
        {"embedding": 8, "hidden": [256, 256], "buckets": 80},
    ),
)
def char_lstm(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return CharLSTM(cfg, num_classes)


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
        self.head = mlp(cfg, cfg.embedding, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        words = (ids != PAD).unsqueeze(-1).to(self.embed.weight.dtype)
        vectors = self.embed(ids % self.buckets) * words
        mean = vectors.sum(-2) / words.sum(-2).clamp(min=1.0)
        return self.head(mean)


@model(
    "text_bow",
    "mean of word vectors and an MLP: a text classifier over word ids",
    Example("SST-2 (sst2_fedavg.toml: 16,384 buckets)", 64, 2, {"buckets": 16384, "hidden": []}),
)
def text_bow(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    return TextBoW(cfg, num_classes)


def takes_ids(model: nn.Module) -> bool:
    """Whether a model reads token ids (text_bow, char_lstm) rather than float features."""
    return getattr(model, "takes_ids", False)


def vmaps(model: nn.Module) -> bool:
    """Whether torch.func's vmap batches this model's clients (not fused recurrent layers)."""
    return getattr(model, "vmaps", True)


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
