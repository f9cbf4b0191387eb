"""A client's local objective as a gradient oracle over a flat vector (what a method's client
round computes with), built once per process and partition from the round's spec."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from fedsim.codecs import readonly_tensor
from fedsim.config import PrivacyConfig
from fedsim.data import DataConfig, client_data, load_dataset
from fedsim.heterogeneity import Adversaries, Failures
from fedsim.method import METHODS, FederatedMethod, Params
from fedsim.models import ModelConfig, bind, build_model, flat_params, loss_fn
from fedsim.privacy.mechanisms import PrivateGradients, poisson_batches
from fedsim.registry import load_plugins


@dataclass(frozen=True)
class RoundSpec:
    """The part of the scenario a client needs, as sent in every round's config."""

    seed: int
    device: str
    data: DataConfig
    model: ModelConfig
    params: Params  # the algorithm's hyperparameters
    failures: Failures  # injected failures (the ClientApp raises when its coin says so)
    adversaries: Adversaries  # Byzantine clients (the ClientApp corrupts what they send)
    privacy: PrivacyConfig

    @property
    def method(self) -> FederatedMethod:
        return METHODS.get(self.params.name)

    @staticmethod
    @lru_cache(maxsize=8)
    def parse(text: str) -> RoundSpec:
        load_plugins()  # the methods, in a fresh ClientApp process too
        d = json.loads(text)
        return RoundSpec(
            seed=d["seed"],
            device=d["device"],
            data=DataConfig.model_validate(d["data"]),
            model=ModelConfig.model_validate(d["model"]),
            params=METHODS.get(d["algorithm"]["name"]).params.model_validate(d["algorithm"]),
            failures=Failures.model_validate(d["failures"]),
            adversaries=Adversaries.model_validate(d["adversaries"]),
            privacy=PrivacyConfig.model_validate(d["privacy"]),
        )


class LocalObjective:
    """f_i(x) = mean loss over the client's examples + (l2/2)||x||^2, gradients as flat vectors.

    With `private` (DP-SGD) every data gradient is Opacus's private one, on Poisson batches.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        l2: float,
        classes: int,
        private: PrivateGradients | None = None,
    ):
        self.model, self.inputs, self.targets, self.l2 = model, x, y, l2
        self.loss = loss_fn(classes)
        self.n = len(y)
        self.private = private
        self.rng: torch.Generator | None = None  # the round's generator (DP noise)

    def batches(
        self, batch_size: int, steps: int, gen: torch.Generator
    ) -> Iterator[torch.Tensor | None]:
        """The round's batches: shuffled epochs, or Poisson with rate batch_size/n under DP."""
        self.rng = gen
        device = self.inputs.device
        if self.private is None:
            yield from minibatches(self.n, batch_size, steps, gen, device)
            return
        q = min(1.0, batch_size / self.n) if batch_size else 1.0
        self.expected = q * self.n
        for idx in poisson_batches(self.n, q, steps, gen):
            yield idx.to(device)

    def load(self, received: np.ndarray) -> torch.Tensor:
        """The received model copied into the model's reusable flat buffer on its device.

        Clients of one process run one after another and share this buffer: a client
        half that keeps anything past its round must copy it (into Context.state).
        """
        buffer = self.model.flat_buffer
        buffer.copy_(readonly_tensor(received))
        return buffer

    def bind(self, x: torch.Tensor) -> None:
        """Evaluate at `x` from now on; in-place updates of `x` move the model."""
        self.x = x
        self.params = bind(self.model, x)
        self.views = [p.data for p in self.params]  # plain tensors sharing x's memory

    def _grads(self, idx: torch.Tensor | None) -> tuple[float, tuple[torch.Tensor, ...]]:
        """Data loss and per-parameter gradients on examples `idx` (all if None)."""
        xb = self.inputs if idx is None else self.inputs[idx]
        yb = self.targets if idx is None else self.targets[idx]
        if self.private is not None:
            value, grads = self.private(self.loss, xb, yb, self.expected, self.rng)
        else:
            loss = self.loss(self.model(xb), yb)
            grads = torch.autograd.grad(loss, self.params)
            value = float(loss.detach())
        if self.l2:
            value += 0.5 * self.l2 * float(self.x.dot(self.x))
        return value, grads

    def loss_grad(self, idx: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Loss and flat gradient of f_i on the examples `idx` (all examples if None)."""
        value, grads = self._grads(idx)
        g = torch.cat([gr.reshape(-1) for gr in grads])
        if self.l2:
            g.add_(self.x, alpha=self.l2)
        return value, g

    def hessian_vector(self, idx: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        """H v for the Hessian of f_i at x on examples `idx`, by double backward."""
        xb = self.inputs if idx is None else self.inputs[idx]
        yb = self.targets if idx is None else self.targets[idx]
        grads = torch.autograd.grad(self.loss(self.model(xb), yb), self.params, create_graph=True)
        g = torch.cat([gr.reshape(-1) for gr in grads])
        hv = torch.autograd.grad(g @ v, self.params)
        return torch.cat([h.reshape(-1) for h in hv]).detach() + self.l2 * v

    def sgd_step(self, idx: torch.Tensor | None, lr: float) -> float:
        """x <- x - lr * grad f_i(x) in place, without building the flat gradient; the loss."""
        value, grads = self._grads(idx)
        if self.l2:
            self.x.mul_(1.0 - lr * self.l2)
        torch._foreach_add_(self.views, grads, alpha=-lr)
        return value


def minibatches(
    n: int, batch_size: int, steps: int, gen: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor | None]:
    """`steps` index batches from consecutive shuffled epochs (None = full batch).

    An epoch's last batch holds the remainder, so E epochs visit every example E times.
    """
    if batch_size == 0 or batch_size >= n:
        for _ in range(steps):
            yield None
        return
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch_size].to(device)
        pos += batch_size


@lru_cache(maxsize=4)
def _model(model_json: str, in_features: int, classes: int, device: str, dp: str) -> nn.Module:
    """One model object (and flat buffer) per process, architecture and DP-SGD setting;
    under DP-SGD it carries Opacus's private-gradient machinery (`dp` is its JSON)."""
    cfg = ModelConfig.model_validate_json(model_json)
    model = build_model(cfg, in_features, classes, seed=0).to(device)
    model.flat_buffer = flat_params(model)
    model.private = None
    if dp:
        s = json.loads(dp)
        model.private = PrivateGradients(model, s["sigma"], s["c"])
    return model


@lru_cache(maxsize=1024)
def objective_for(spec_text: str, partition_id: int) -> LocalObjective:
    """The local objective of a partition (data and model loaded once per process)."""
    spec = RoundSpec.parse(spec_text)
    ds = load_dataset(spec.data, spec.seed)
    x, y, l2 = client_data(spec.data, spec.seed, partition_id)
    priv = spec.privacy
    dp = ""
    if priv.mechanism == "dp_sgd":
        dp = json.dumps({"sigma": priv.noise_multiplier, "c": priv.max_grad_norm})
    model = _model(
        spec.model.model_dump_json(), ds.x_train.shape[1], ds.num_classes, spec.device, dp
    )
    tx = torch.as_tensor(x, device=spec.device)
    ty = torch.as_tensor(y, device=spec.device)
    return LocalObjective(model, tx, ty, float(l2), ds.num_classes, model.private)
