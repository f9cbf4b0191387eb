"""The scenario's `[privacy]` table (ALGORITHMS.md section 6)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PrivacyConfig(BaseModel):
    """Which mechanism, how much noise (or a target epsilon), the clipping norm and delta.

    - `dp_sgd`: sample-level DP-SGD in local training (Opacus per-sample clipping and
      Gaussian noise, Poisson batches of expected size `algorithm.batch_size`);
    - `dp_fedavg`: client-level DP: each client update clipped to C, Gaussian noise at the
      server, cohort sampling at rate `algorithm.fraction`;
    - `local`: every client clips and noises the vector it sends (before encoding).
    """

    model_config = ConfigDict(extra="forbid")

    mechanism: Literal["none", "dp_sgd", "dp_fedavg", "local"] = "none"
    epsilon: float | None = Field(None, gt=0, description="target epsilon (inf: no noise)")
    noise_multiplier: float | None = Field(
        None, ge=0, description="sigma (noise std / C); when both are set, the one used"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="C: the clipping norm")
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv"] = "rdp"

    @model_validator(mode="after")
    def _one_noise_setting(self) -> PrivacyConfig:
        if self.mechanism == "none":
            return self
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                f"mechanism {self.mechanism!r} needs epsilon (a target) or noise_multiplier"
            )
        if self.epsilon is not None and math.isinf(self.epsilon):
            return self.model_copy(update={"noise_multiplier": 0.0})
        return self

    @property
    def active(self) -> bool:
        return self.mechanism != "none"
