"""What every client half needs: its local objective as a gradient oracle over a flat vector."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn

from fedsim.codecs import pack, readonly_tensor, unpack, with_feedback
from fedsim.data import DataConfig, client_data, load_dataset
from fedsim.heterogeneity import Adversaries, Failures
from fedsim.models import ModelConfig, bind, build_model, flat_params, loss_fn
from fedsim.privacy.config import PrivacyConfig
from fedsim.privacy.mechanisms import PrivateGradients, poisson_batches


@dataclass(frozen=True)
class RoundSpec:
    """The part of the scenario a client needs, as sent in every round's config."""

    seed: int
    device: str
    data: DataConfig
    model: ModelConfig
    params: SimpleNamespace  # the algorithm's hyperparameters
    failures: Failures  # injected failures (the ClientApp raises when its coin says so)
    adversaries: Adversaries  # Byzantine clients (the ClientApp corrupts what they send)
    privacy: PrivacyConfig

    @staticmethod
    @lru_cache(maxsize=8)
    def parse(text: str) -> RoundSpec:
        d = json.loads(text)
        return RoundSpec(
            seed=d["seed"],
            device=d["device"],
            data=DataConfig.model_validate(d["data"]),
            model=ModelConfig.model_validate(d["model"]),
            params=SimpleNamespace(**d["algorithm"]),
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


def steps_for(params: SimpleNamespace, n: int) -> int:
    """Local steps in a round: `local_steps`, or `local_epochs` passes over n examples."""
    if getattr(params, "local_steps", 0):
        return params.local_steps
    batch = params.batch_size or n
    return params.local_epochs * math.ceil(n / batch)


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


@dataclass
class ClientJob:
    """Everything one client half gets for one round."""

    round: int
    partition_id: int
    spec: RoundSpec
    objective: LocalObjective
    inbox: ArrayRecord  # every array the server sent (the model and any method extras)
    received: np.ndarray | None  # the model as received (read-only); None if not sent
    x: torch.Tensor | None  # a writable copy of it on the device (reused buffer)
    rng: torch.Generator  # derived from (seed, round, partition id)
    state: RecordDict  # Context.state: persists across rounds on this node
    config: ConfigRecord  # the round's config as sent by the server

    @property
    def params(self) -> SimpleNamespace:
        return self.spec.params


@dataclass
class ClientUpdate:
    """What a client half returns: the vector to send, its wire format, and its metrics."""

    vector: np.ndarray  # what the method sends (an adversary corrupts this one)
    train_loss: float
    grad_evals: int  # gradient evaluations (one per local step)
    work: int  # training examples processed, for the simulated clock
    codec: str = "fp32"  # the vector's wire format (a fedsim.codecs spec)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # side arrays, sent as float32


FEEDBACK = "error-feedback"  # Context.state key of the error memory e


def error_feedback(state: RecordDict, v: np.ndarray, spec: str) -> np.ndarray:
    """`with_feedback` with the memory e kept in the client's `state`."""
    e = unpack(state[FEEDBACK]["e"]) if FEEDBACK in state else None
    sent, memory = with_feedback(v, e, spec)
    state[FEEDBACK] = ArrayRecord({"e": pack(memory)})
    return sent
