"""The algorithm contract: a validated hyperparameter set plus a client and a server half.

`fedsim.servers` registers each method's server half (its parameters model and
a Flower strategy factory) in SERVER_HALVES; `fedsim.clients` registers the
client half (one function: what a client does in a round) in CLIENT_HALVES.
Both under the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedsim.registry import Registry


class AlgorithmParams(BaseModel):
    """Hyperparameters every method has; a method subclasses this with its own."""

    model_config = ConfigDict(extra="forbid")

    name: str
    fraction: float = Field(1.0, gt=0, le=1, description="clients sampled per round")
    min_clients: int = Field(1, ge=1, description="lower bound on the sampled cohort")


@dataclass(frozen=True)
class ServerHalf:
    """What the server registers for a method."""

    params: type[AlgorithmParams]
    strategy: Callable[..., Any] | None  # (scenario, partitions) -> a Flower Strategy
    doc: str = ""
    # (scenario) -> scenario with data-dependent settings (e.g. gamma = 1/L) made concrete,
    # run when the scenario is loaded; a ValueError "algorithm.key: ..." rejects it
    resolve: Callable[[Any], Any] | None = None
    # (grid, scenario, out_dir, resume) -> None: a method that drives its own loop instead of
    # Flower rounds of a strategy (split learning's label party)
    loop: Callable[..., None] | None = None


# The round config's key naming the model's wire format in `arrays` ("" = no model sent)
MODEL_CODEC = "model-codec"

SERVER_HALVES: Registry[ServerHalf] = Registry("algorithm (server half)")
CLIENT_HALVES: Registry[Callable[..., Any]] = Registry("algorithm (client half)")


def algorithm_names() -> list[str]:
    """Methods with both halves registered."""
    return [n for n in SERVER_HALVES.names() if n in CLIENT_HALVES]
