"""Small model zoo and the flat-vector view every algorithm works on.

A model is exactly one float32 vector of d numbers: its parameters, then its floating-point
buffers (BatchNorm's running_mean and running_var). That vector is what travels and what the
methods update: running statistics a client's train-mode forward updates are written into
its vector, travel in its upload with the parameters and are averaged like them (what
Flower's PyTorch examples do with a state dict); evaluation runs in eval mode on the
averaged statistics. Gradients cover the first `n_params(model)` entries only. Integer
buffers (BatchNorm's num_batches_tracked) stay in the module, are not federated, and count
the forwards of every client that module runs (a BatchNorm with momentum=None, a cumulative
average, would read that count).

`[model] buffers = "local"` keeps the float buffers on the clients instead (FedBN, Li et al.,
ICLR 2021): the vector is the parameters only (d = n_params), so every method works
unchanged and never sees a buffer; each client keeps its own statistics in its
Context.state (from the model's initial buffers, updated by its train-mode forwards in every
round it trains, kept in checkpoints), and server evaluation and `RunResult.module()` use the
model's initial buffers, as the server has no statistics of its own (FedBN evaluates on
clients' own data). A model without float buffers refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)
from torch import nn

from fedsim.data.base import PAD
from fedsim.registry import RegistrationError, Registry, first_line, strict


class NoOptions(BaseModel):
    """The options of a model that takes none."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LinearOptions(NoOptions):
    bias: bool = Field(True, description="layers have a bias")


class MLPOptions(LinearOptions):
    hidden: list[PositiveInt] = Field(
        default_factory=lambda: [64], description="the hidden layers' widths"
    )


class TextOptions(MLPOptions):
    embedding: int = Field(64, ge=1, description="a token's vector width")
    buckets: int = Field(32768, ge=2, description="ids are taken mod buckets (the table size)")


class ResNetOptions(NoOptions):
    depth: int = Field(20, ge=8, description="6n+2 layers (8, 14, 20, 32, 44, 56)")

    @field_validator("depth")
    @classmethod
    def _six_n_plus_two(cls, v: int) -> int:
        if (v - 2) % 6:
            raise ValueError(f"{v} is not 6n+2 (a CIFAR ResNet: 8, 14, 20, 32, 44, 56)")
        return v


Builder = Callable[[Any, int, int], nn.Module]


@dataclass(frozen=True)
class Example:
    """The input a model's parameter count is quoted for in `fedsim list`."""

    what: str
    in_features: int
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder `build(options, in_features, num_classes)`, the
    pydantic model of its options (the `[model]` keys besides `name`), and an example."""

    build: Builder
    options: type[BaseModel]
    example: Example | None = None


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    options: type[BaseModel] = NoOptions,
    doc: str = "",
    example: Example | None = None,
) -> Callable[[Builder], Builder]:
    """Register a model builder `build(options, in_features, num_classes) -> nn.Module`;
    `options` validates the scenario's `[model]` keys besides `name` (an unknown key is
    refused) and the builder gets the validated instance. Binary tasks want one output
    (`output_dim`). Returns the builder unchanged."""
    options = strict(options, f"model {name!r}")

    def deco(build: Builder) -> Builder:
        if not callable(build):
            raise RegistrationError(f"model {name!r}: the builder is not callable")
        MODELS.register(name, ModelSpec(build, options, example), doc or first_line(build))
        return build

    return deco


class ModelConfig(BaseModel):
    """The `[model]` table of a scenario: `name` and `buffers`, and the model's own options as
    further keys (validated by the options model it was registered with)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: Annotated[str, AfterValidator(MODELS.check)] = Field(
        "mlp", description="a registered model; its options are further keys of this table"
    )
    buffers: Literal["average", "local"] = Field(
        "average",
        description="float buffers (BatchNorm's running statistics) travel with the parameters"
        " and are averaged, or stay on each client (FedBN; server evaluation uses the initial"
        " ones)",
    )

    @model_validator(mode="after")
    def _own_options(self) -> ModelConfig:
        """The options validated, defaults filled in (so a run records every value)."""
        self.__pydantic_extra__ = self.options.model_dump(mode="json")
        return self

    @property
    def options(self) -> BaseModel:
        """The validated options the builder gets."""
        return MODELS.get(self.name).options.model_validate(self.model_extra or {})


def example_parameters(name: str) -> tuple[int, Example] | None:
    """The parameter count of model `name` on its example input (built on the meta device),
    None for a model registered without one."""
    ex = MODELS.get(name).example
    if ex is None:
        return None
    with torch.device("meta"):
        m = build_model(ModelConfig(name=name, **ex.config), ex.in_features, ex.num_classes, 0)
    return sum(p.numel() for p in m.parameters()), ex


def output_dim(num_classes: int) -> int:
    """Binary tasks use one logit (BCE-with-logits), multiclass one logit per class."""
    return 1 if num_classes == 2 else num_classes


@register_model(
    "logreg",
    LinearOptions,
    "linear model: logistic / softmax regression",
    Example("8x8 digits", 64, 10),
)
def logreg(o: LinearOptions, in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, output_dim(num_classes), bias=o.bias)


@register_model(
    "mlp",
    MLPOptions,
    "multilayer perceptron with ReLU (widths from `hidden`)",
    Example("8x8 digits", 64, 10),
)
def mlp(o: MLPOptions, in_features: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for h in o.hidden:
        layers += [nn.Linear(width, h, bias=o.bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, output_dim(num_classes), bias=o.bias))
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


@register_model(
    "cnn",
    LinearOptions,
    "small CNN for square one-channel images such as 8x8 digits",
    Example("8x8 digits", 64, 10),
)
def cnn(o: LinearOptions, in_features: int, num_classes: int) -> nn.Module:
    side = math.isqrt(in_features)
    if side * side != in_features:
        raise ValueError(f"model.name: 'cnn' needs square images, got {in_features} features")
    return SmallCNN(side, num_classes, o.bias)


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


@register_model(
    "fedavg_cnn",
    LinearOptions,
    "the FedAvg paper's CNN for 28x28 or 32x32 images, 1 or 3 channels",
    Example("FEMNIST, 28x28, 62 classes", 784, 62),
)
def fedavg_cnn(o: LinearOptions, in_features: int, num_classes: int) -> nn.Module:
    return FedAvgCNN(*images_for("fedavg_cnn", in_features), num_classes, o.bias)


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
    running statistics, so DP-SGD can clip it, and the normalisation that holds up when
    clients' data differ (Hsieh et al., 2020)."""

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


@register_model(
    "resnet",
    ResNetOptions,
    "CIFAR ResNet (depth 6n+2) with GroupNorm, for 1- or 3-channel square images",
    Example("CIFAR-10, 32x32x3, depth 20", 3072, 10),
)
def resnet(o: ResNetOptions, in_features: int, num_classes: int) -> nn.Module:
    return ResNet(*images_for("resnet", in_features), o.depth, num_classes)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model: character vectors, stacked LSTM layers (widths from
    `hidden`), the output read at the last id before the padding (the next character, for
    Shakespeare). Ids are taken mod `buckets`."""

    takes_ids = True
    vmaps = False  # torch has no vmap rule for its fused LSTM: a cohort runs client by client

    def __init__(self, cfg: TextOptions, num_classes: int) -> None:
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


@register_model(
    "char_lstm",
    TextOptions,
    "LEAF's character LSTM (embedding, LSTM layers of widths `hidden`) over ids",
    Example(
        "Shakespeare (LEAF: 8 + 2x256, 80 chars)",
        80,
        80,
        {"embedding": 8, "hidden": [256, 256], "buckets": 80},
    ),
)
def char_lstm(o: TextOptions, in_features: int, num_classes: int) -> nn.Module:
    return CharLSTM(o, num_classes)


class TextBoW(nn.Module):
    """A text classifier over word ids: the mean of the words' vectors (id 0 pads and is left
    out; ids beyond `buckets` share vectors, the hashing trick), hidden ReLU layers, the
    output. fastText's shape, small enough to federate."""

    takes_ids = True  # its inputs are token ids, not features

    def __init__(self, cfg: TextOptions, num_classes: int) -> None:
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


@register_model(
    "text_bow",
    TextOptions,
    "mean of word vectors and an MLP: a text classifier over word ids",
    Example("SST-2 (sst2_fedavg.toml: 16,384 buckets)", 64, 2, {"buckets": 16384, "hidden": []}),
)
def text_bow(o: TextOptions, in_features: int, num_classes: int) -> nn.Module:
    return TextBoW(o, num_classes)


def takes_ids(model: nn.Module) -> bool:
    """Whether a model reads token ids (text_bow, char_lstm) rather than float features."""
    return getattr(model, "takes_ids", False)


def vmaps(model: nn.Module) -> bool:
    """Whether torch.func's vmap batches this model's clients (not fused recurrent layers, nor
    running statistics, which a forward updates in place)."""
    return getattr(model, "vmaps", True) and not float_buffers(model)


def build_model(cfg: ModelConfig, in_features: int, num_classes: int, seed: int) -> nn.Module:
    """The model with parameters initialised from `seed` (global RNG left untouched), marked
    with where its float buffers live (`cfg.buffers`), which its flat vector follows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS.get(cfg.name).build(cfg.options, in_features, num_classes)
    model.local_buffers = cfg.buffers == "local"
    return model


# Batching a cohort with vmap pays on a CPU while a client's step is small: measured on a
# 2-core CPU it is 3-4x faster than client by client at 10k parameters, still ahead at
# ~170k, and 5x slower at 1M (one client's products of separate weights already fill the
# cores; large stacked tensors defeat the allocator's reuse). Above this, a CPU cohort runs
# its clients side by side on single-threaded workers instead (clients/objective.py).
VMAP_PARAMS = 150_000


def flat_params(model: nn.Module) -> torch.Tensor:
    """A fresh flat copy of the model's vector: its parameters, then its float buffers unless
    they stay local."""
    return _flat(federated(model))


def flat_buffers(model: nn.Module) -> torch.Tensor:
    """A fresh flat copy of the model's float buffers (what a client keeps under "local")."""
    return _flat(float_buffers(model))


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def bind(
    model: nn.Module, x: torch.Tensor, buffers: torch.Tensor | None = None
) -> list[nn.Parameter]:
    """Make the model's vector views into the flat `x` (updates to x move the model; a
    train-mode forward writes running statistics that travel into x) and, for buffers that
    stay local, its float buffers views into `buffers` (a client's own, which its forwards
    update; None leaves them as they are); the parameters, what gradients are taken for."""
    _view(federated(model), x, "parameters and travelling float buffers")
    if buffers is not None:
        _view(float_buffers(model), buffers, "float buffers")
    return list(model.parameters())


def _view(tensors: list[torch.Tensor], x: torch.Tensor, what: str) -> None:
    """Make the tensors consecutive views into the flat x, which they must fill exactly."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.data = x[offset : offset + n].view_as(t)
        offset += n
    if offset != x.numel():
        raise ValueError(f"vector has {x.numel()} entries, model has {offset} {what}")


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


def float_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point buffers (running statistics) that travel after the parameters."""
    return [b for b in model.buffers() if b.is_floating_point()]


def federated(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the flat vector holds, in its order: parameters, then float buffers unless
    they stay on the clients (`buffers = "local"`)."""
    return [*model.parameters(), *([] if local_buffers(model) else float_buffers(model))]


def local_buffers(model: nn.Module) -> bool:
    """Whether the model's float buffers stay on each client rather than travel (FedBN)."""
    return getattr(model, "local_buffers", False)


def n_params(model: nn.Module) -> int:
    """Entries of the flat vector that are parameters (its first ones): where gradients go."""
    return sum(p.numel() for p in model.parameters())
