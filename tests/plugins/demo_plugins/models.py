"""A model with options of its own: an MLP whose hidden layers are batch-normalised."""

from pydantic import BaseModel, Field
from torch import nn

import fedsim


class NormedMLPOptions(BaseModel):
    """The `[model]` keys of `normed_mlp` besides its name."""

    width: int = Field(32, ge=1, description="units per hidden layer")
    depth: int = Field(1, ge=1, description="hidden layers")


@fedsim.register_model("normed_mlp", options=NormedMLPOptions)
def normed_mlp(options: NormedMLPOptions, in_features: int, num_classes: int) -> nn.Module:
    """MLP with BatchNorm after each hidden layer (its running statistics are averaged)."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(options.depth):
        layers += [nn.Linear(width, options.width), nn.BatchNorm1d(options.width), nn.ReLU()]
        width = options.width
    layers.append(nn.Linear(width, 1 if num_classes == 2 else num_classes))
    return nn.Sequential(*layers)
