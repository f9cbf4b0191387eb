"""The layers of fedsim's own models (fedsim/models.py registers them, with their options):
a module of its own so that registering the models, and validating a scenario, loads no torch.
Imports point one way: models.py reaches this module when a model is built, never back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedsim.data.base import PAD

if TYPE_CHECKING:
    from fedsim.models import TextOptions


def output_dim(num_classes: int) -> int:
    """Binary tasks use one logit (BCE-with-logits), multiclass one logit per class."""
    return 1 if num_classes == 2 else num_classes


def mlp(hidden: Sequence[int], bias: bool, in_features: int, num_classes: int) -> nn.Sequential:
    """Linear layers of widths `hidden` with ReLU between, then the output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, output_dim(num_classes), bias=bias))
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
        self.head = mlp(cfg.hidden, cfg.bias, cfg.embedding, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        words = (ids != PAD).unsqueeze(-1).to(self.embed.weight.dtype)
        vectors = self.embed(ids % self.buckets) * words
        mean = vectors.sum(-2) / words.sum(-2).clamp(min=1.0)
        return self.head(mean)
