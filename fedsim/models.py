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
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from fedsim.registry import RegistrationError, Registry, first_line, strict

if TYPE_CHECKING:  # torch is imported where a model is built: the registry and options need none
    import torch
    from torch import nn


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


Builder = Callable[[Any, int, int], "nn.Module"]


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
    (`fedsim.nets.output_dim`). Returns the builder unchanged."""
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
    import torch

    with torch.device("meta"):
        m = build_model(ModelConfig(name=name, **ex.config), ex.in_features, ex.num_classes, 0)
    return sum(p.numel() for p in m.parameters()), ex


@register_model(
    "logreg",
    LinearOptions,
    "linear model: logistic / softmax regression",
    Example("8x8 digits", 64, 10),
)
def logreg(o: LinearOptions, in_features: int, num_classes: int) -> nn.Module:
    from fedsim.nets import mlp as layers

    return layers([], o.bias, in_features, num_classes)[0]


@register_model(
    "mlp",
    MLPOptions,
    "multilayer perceptron with ReLU (widths from `hidden`)",
    Example("8x8 digits", 64, 10),
)
def mlp(o: MLPOptions, in_features: int, num_classes: int) -> nn.Module:
    from fedsim.nets import mlp as layers

    return layers(o.hidden, o.bias, in_features, num_classes)


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
    from fedsim.nets import SmallCNN

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


@register_model(
    "fedavg_cnn",
    LinearOptions,
    "the FedAvg paper's CNN for 28x28 or 32x32 images, 1 or 3 channels",
    Example("FEMNIST, 28x28, 62 classes", 784, 62),
)
def fedavg_cnn(o: LinearOptions, in_features: int, num_classes: int) -> nn.Module:
    from fedsim.nets import FedAvgCNN

    return FedAvgCNN(*images_for("fedavg_cnn", in_features), num_classes, o.bias)


@register_model(
    "resnet",
    ResNetOptions,
    "CIFAR ResNet (depth 6n+2) with GroupNorm, for 1- or 3-channel square images",
    Example("CIFAR-10, 32x32x3, depth 20", 3072, 10),
)
def resnet(o: ResNetOptions, in_features: int, num_classes: int) -> nn.Module:
    from fedsim.nets import ResNet

    return ResNet(*images_for("resnet", in_features), o.depth, num_classes)


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
    from fedsim.nets import CharLSTM

    return CharLSTM(o, num_classes)


@register_model(
    "text_bow",
    TextOptions,
    "mean of word vectors and an MLP: a text classifier over word ids",
    Example("SST-2 (sst2_fedavg.toml: 16,384 buckets)", 64, 2, {"buckets": 16384, "hidden": []}),
)
def text_bow(o: TextOptions, in_features: int, num_classes: int) -> nn.Module:
    from fedsim.nets import TextBoW

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
    import torch

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
    import torch

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
    """Loss matching `fedsim.nets.output_dim` (mean unless `reduction="none"`): BCE-with-logits for
    binary, cross-entropy otherwise."""
    from torch import nn

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
