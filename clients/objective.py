"""A cohort's local objectives as one gradient oracle over stacked flat vectors: what a
method's client round computes with, for one client (a Flower message) or for many at once
(the in-process runtime's vectorized cohorts).

Every tensor a method sees has a leading client dimension C. Two engines compute the
gradients: `vmap` evaluates all C clients as one batched computation (torch.func's
vmap(grad(functional_call)) over the stacked parameters and padded batches), `loop` runs
each client through the model itself (autograd). Under DP-SGD both compute the noisy
clipped gradient of privacy/clipping.py (per example inside per client). One client always
takes the loop: it is the sequential path. Models above VMAP_PARAMS parameters on a CPU
take it too, where stacking does not pay, and models vmap cannot batch (fused LSTMs); a
cohort of them runs its clients side by side
instead, one model replica and one single-threaded worker per core (a batch-32 step of one
client is too small to keep two cores busy; under DP-SGD one after another on the model).
Each client draws its batches from its own generator, step by step, exactly as alone.

A model with running statistics (BatchNorm) takes the loop too, as vmap cannot update them
in place (said once per process, on stderr): every train-mode forward, gradient and
Hessian-vector products included, updates the statistics in the buffer entries of the row
it is bound to, so each client keeps its own. Gradients and l2 cover the parameter entries
(the first n_params of a row); the buffer entries of a gradient are zero. With
`model.buffers = "local"` (FedBN) a row is the parameters only and the statistics live in
each client's own buffers (`load_buffers`, bound with its row), which its ClientApp keeps.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from socket import gethostname

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, jvp, vmap

from fedsim.allocator import keep_freed_memory
from fedsim.codecs import readonly_tensor
from fedsim.config import PrivacyConfig
from fedsim.data import DataConfig, client_data, load_dataset
from fedsim.heterogeneity import Adversaries, Failures
from fedsim.method import METHODS, FederatedMethod, Params
from fedsim.models import (
    VMAP_PARAMS,
    ModelConfig,
    bind,
    build_model,
    flat_buffers,
    flat_params,
    float_buffers,
    loss_fn,
    n_params,
    vmaps,
)
from fedsim.plugins import Plugin, activate
from fedsim.privacy.clipping import PrivateGradients
from fedsim.privacy.mechanisms import poisson_batches
from fedsim.runtime.threads import pool, single_threaded_ops


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
        d = json.loads(text)
        # fedsim's methods and the run's plug-ins, in a fresh ClientApp process too
        activate([Plugin.model_validate(p) for p in d["plugins"]], f"host {gethostname()!r}")
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


@dataclass(frozen=True)
class Shard:
    """One client's examples on the device, and its l2 coefficient."""

    inputs: Tensor
    targets: Tensor
    l2: float

    @property
    def n(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Batch:
    """One local step of a cohort: each client's example indices (None: all of them), which
    clients take the step, and the padded form the vmap engine gathers with."""

    rows: list[Tensor | None]
    flags: list[bool]  # which clients take the step
    sizes: list[int]  # examples in each client's batch (0 if inactive)
    device: torch.device

    @cached_property
    def active(self) -> Tensor:
        """[C] bool on the clients' device."""
        return torch.tensor(self.flags, device=self.device)

    @property
    def clients(self) -> list[int]:
        """The clients that take the step."""
        return [c for c, on in enumerate(self.flags) if on]

    def only(self, keep: Tensor) -> Batch:
        """The same batch with the clients outside `keep` ([C] bool) inactive."""
        flags = [a and k for a, k in zip(self.flags, keep.tolist(), strict=True)]
        sizes = [k if a else 0 for k, a in zip(self.sizes, flags, strict=True)]
        return Batch(self.rows, flags, sizes, self.device)

    def padded(self, n: list[int], device) -> tuple[Tensor, Tensor]:
        """[C, B] indices (padding points at example 0) and the [C, B] float mask."""
        sizes = torch.tensor(self.sizes, device=device)
        if all(r is None for r in self.rows):  # full batches: the first n_i examples
            idx = torch.arange(max(n), device=device).expand(len(n), -1)
            return idx, (idx < sizes[:, None]).to(torch.float32)
        width = max(1, max(self.sizes))
        if all(r is not None and k == width for r, k in zip(self.rows, self.sizes, strict=True)):
            return torch.stack(self.rows).to(device), torch.ones(len(n), width, device=device)
        idx = torch.zeros(len(n), width, dtype=torch.long)  # built on the host, moved once
        for c, (r, k) in enumerate(zip(self.rows, self.sizes, strict=True)):
            if k:
                idx[c, :k] = torch.arange(k) if r is None else r
        mask = torch.arange(width, device=device) < sizes[:, None]
        return idx.to(device), mask.to(torch.float32)


class Cohort:
    """f_i(x_i) = mean loss over a batch of client i's examples + (l2_i/2)||x_i||^2 for C
    clients at once; x is [C, d]. With `private` (DP-SGD) every data gradient is the
    noisy clipped one on Poisson batches."""

    def __init__(self, model: nn.Module, shards: list[Shard], classes: int, vectorize: bool):
        self.model, self.shards, self.classes = model, shards, classes
        self.loss = loss_fn(classes)
        self.private: PrivateGradients | None = model.private
        self.device = shards[0].inputs.device
        self.sizes = [s.n for s in shards]
        self.n = torch.tensor(self.sizes, dtype=torch.float64)
        self.l2 = torch.tensor([s.l2 for s in shards], device=self.device)
        self.regularized = any(s.l2 for s in shards)
        self.n_params = n_params(model)  # the rest of a row: running statistics
        small = model.flat_buffer.numel() <= VMAP_PARAMS or self.device.type == "cuda"
        batched = vectorize and len(shards) > 1
        if batched and float_buffers(model):
            say_no_vmap()
        self.vmap = batched and small and vmaps(model)
        threads = batched and not self.vmap and self.private is None  # hooks: one model
        self.replicas = replicas(model) if threads else [model]
        self.gens: list[torch.Generator] = []
        self.expected: list[float] = []
        self.buffers: Tensor | None = None  # [C, b]: the clients' own float buffers (FedBN)

    @property
    def size(self) -> int:
        return len(self.shards)

    # -- the stacked model
    def load(self, rows: list[np.ndarray]) -> Tensor:
        """The received vectors as a writable [C, d] tensor on the device (one client reuses
        the model's flat buffer: copy what you keep past the round)."""
        if self.size == 1:
            buffer = self.model.flat_buffer
            buffer.copy_(readonly_tensor(rows[0]))
            return buffer.unsqueeze(0)
        return torch.from_numpy(np.stack(rows)).to(self.device)

    def load_buffers(self, rows: list[np.ndarray | None], initial: Tensor) -> None:
        """Each client's own float buffers (None: `initial`, the model's) as the writable
        [C, b] `self.buffers` on the device, bound with each client's row from now on: its
        train-mode forwards update them (`model.buffers = "local"`)."""
        own = [initial if r is None else readonly_tensor(r) for r in rows]
        self.buffers = torch.stack(own).to(self.device)

    def own(self, c: int) -> Tensor | None:
        """Client c's own float buffers, bound with its row (None: they travel in the row)."""
        return None if self.buffers is None else self.buffers[c]

    def bind(self, x: Tensor) -> None:
        """Evaluate at x ([C, d]) from now on; in-place updates of x move the models."""
        self.x = x
        self.bound = bind(self.model, x[0], self.own(0)) if self.size == 1 else None  # once

    # -- batches
    def batches(self, batch_size: int, steps: int | list[int], gens) -> Iterator[Batch]:
        """Each client's batches for the round, drawn step by step from its own generator:
        shuffled epochs (an epoch's last batch holds the remainder), or Poisson batches with
        rate batch_size/n_i under DP-SGD. Client i takes steps[i] steps; the cohort takes the
        longest, the others inactive."""
        self.gens = list(gens)
        counts = steps if isinstance(steps, list) else [steps] * self.size
        if self.private is None:
            streams = [
                minibatches(n, batch_size, k, g)
                for n, k, g in zip(self.sizes, counts, self.gens, strict=True)
            ]
        else:
            rates = [min(1.0, batch_size / n) if batch_size else 1.0 for n in self.sizes]
            self.expected = [q * n for q, n in zip(rates, self.sizes, strict=True)]
            streams = [
                poisson_batches(n, q, k, g)
                for n, q, k, g in zip(self.sizes, rates, counts, self.gens, strict=True)
            ]
        for step in range(max(counts, default=0)):
            rows, active = [], []
            for stream, k in zip(streams, counts, strict=True):
                active.append(step < k)
                rows.append(next(stream) if step < k else None)
            yield self._batch(rows, active)

    def all(self) -> Batch:
        """Every example of every client."""
        return self._batch([None] * self.size, [True] * self.size)

    def _batch(self, rows: list, active: list[bool]) -> Batch:
        sizes = [
            0 if not a else (n if r is None else len(r))
            for r, a, n in zip(rows, active, self.sizes, strict=True)
        ]
        return Batch(rows, active, sizes, self.device)

    def work(self, batch: Batch) -> Tensor:
        """Examples each client processed in this step."""
        return torch.tensor(batch.sizes, dtype=torch.float64)

    # -- gradients
    def loss_grad(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """([C] losses, [C, d] gradients) of the active clients on their batch (zeros for
        the others)."""
        reg = self._regularizer(batch)
        if self.vmap:
            data, g = self._vmap_grads(batch)  # a model without buffers: all parameters
            if self.regularized:
                g.add_(self.x * self.l2[:, None])
        else:
            data, grads = self._loop_grads(batch)
            g = torch.zeros_like(self.x)
            for c, parts in grads.items():
                g[c, : self.n_params] = torch.cat([p.reshape(-1) for p in parts])
                if self.shards[c].l2:
                    w = self.x[c, : self.n_params]
                    g[c, : self.n_params].add_(w, alpha=self.shards[c].l2)
        return losses(data, reg, batch.flags), g

    def sgd_step(self, batch: Batch, lr: float) -> Tensor:
        """x_i <- x_i - lr grad f_i(x_i) for the active clients, in place; their losses."""
        if self.vmap:
            value, g = self.loss_grad(batch)  # zero for inactive clients
            self.x.add_(g, alpha=-lr)
            return value
        reg = self._regularizer(batch)

        def step(c: int, model: nn.Module, params: list[nn.Parameter]) -> float:
            loss, parts = self._client_grad(c, model, params, batch)
            if self.shards[c].l2:  # without building the flat gradient
                self.x[c, : self.n_params].mul_(1.0 - lr * self.shards[c].l2)
            targets = [self.x[c]] if self.private is not None else [p.data for p in params]
            torch._foreach_add_(targets, list(parts), alpha=-lr)
            return loss

        data = self._each(batch.clients, step)
        return losses(data, reg, batch.flags)

    def _regularizer(self, batch: Batch) -> list[float]:
        """(l2_i/2)||x_i||^2 of each client, before the step."""
        if not self.regularized:
            return [0.0] * self.size
        w = self.x[:, : self.n_params]
        return [
            0.5 * s.l2 * float(w[c].dot(w[c])) if s.l2 and batch.flags[c] else 0.0
            for c, s in enumerate(self.shards)
        ]

    def hessian_vector(self, batch: Batch, v: Tensor) -> Tensor:
        """H_i v_i for the Hessian of f_i at x_i on the batch ([C, d])."""
        if self.vmap:
            idx, mask = batch.padded(self.sizes, self.device)
            xb, yb = self._gather(idx)

            def hvp(x, vi, xi, yi, mi):
                g = lambda z: torch.func.grad(self._masked_loss)(z, xi, yi, mi)  # noqa: E731
                return jvp(g, (x,), (vi,))[1]

            out = vmap(hvp)(self.x, v, xb, yb, mask)
        else:
            out = torch.zeros_like(v)

            def product(c: int, model: nn.Module, params: list[nn.Parameter]) -> float:
                xb, yb = self._rows(c, batch.rows[c])
                grads = torch.autograd.grad(self.loss(model(xb), yb), params, create_graph=True)
                g = torch.cat([gr.reshape(-1) for gr in grads])
                hv = torch.autograd.grad(g @ v[c, : self.n_params], params)
                out[c, : self.n_params] = torch.cat([h.reshape(-1) for h in hv]).detach()
                return 0.0

            self._each(batch.clients, product)
        out[:, : self.n_params].add_(self.l2[:, None] * v[:, : self.n_params])
        return out * batch.active[:, None]

    # -- the loop engine: each client through the model itself
    def _rows(self, c: int, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        s = self.shards[c]
        if idx is None:
            return s.inputs, s.targets
        idx = idx.to(self.device)
        return s.inputs[idx], s.targets[idx]

    def _each(self, clients: list[int], fn: Callable[..., float]) -> list[float]:
        """[C] values of fn(c, model, params) for these clients, the model bound to row c of
        x: one after another, or side by side on the replicas' worker threads (clients
        dealt round-robin, so which replica runs a client depends only on the cohort)."""
        value = [0.0] * self.size
        workers = len(self.replicas)
        if workers == 1 or len(clients) == 1:
            for c in clients:
                params = self.bound
                if params is None:
                    params = bind(self.model, self.x[c], self.own(c))
                value[c] = fn(c, self.model, params)
            return value

        def share(k: int) -> None:
            model = self.replicas[k]
            for c in clients[k::workers]:
                value[c] = fn(c, model, bind(model, self.x[c], self.own(c)))

        with single_threaded_ops():
            list(pool(workers).map(share, range(workers)))
        return value

    def _client_grad(
        self, c: int, model: nn.Module, params: list[nn.Parameter], batch: Batch
    ) -> tuple[float, tuple[Tensor, ...]]:
        """Client c's data loss and gradient on its batch: per parameter, or under DP-SGD the
        flat private one (on the one model: its hooks are the model's)."""
        xb, yb = self._rows(c, batch.rows[c])
        if self.private is not None:
            value, flat = self.private(self.loss, xb, yb, self.expected[c], self.gens[c])
            return value, (flat,)
        out = self.loss(model(xb), yb)
        return float(out.detach()), torch.autograd.grad(out, params)

    def _loop_grads(self, batch: Batch) -> tuple[list[float], dict[int, tuple[Tensor, ...]]]:
        grads = {}

        def gradient(c: int, model: nn.Module, params: list[nn.Parameter]) -> float:
            loss, grads[c] = self._client_grad(c, model, params, batch)
            return loss

        return self._each(batch.clients, gradient), grads

    # -- the vmap engine: all clients as one batched computation
    @cached_property
    def _padded(self) -> tuple[Tensor, Tensor]:
        width = max(self.sizes)
        x = torch.zeros(self.size, width, *self.shards[0].inputs.shape[1:], device=self.device)
        y = torch.zeros(self.size, width, dtype=self.shards[0].targets.dtype, device=self.device)
        for c, s in enumerate(self.shards):
            x[c, : s.n], y[c, : s.n] = s.inputs, s.targets
        return x, y

    def _gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self._padded
        rows = torch.arange(self.size, device=self.device)[:, None]
        return x[rows, idx], y[rows, idx]

    @cached_property
    def _layout(self) -> list[tuple[str, torch.Size, int]]:
        return [(name, p.shape, p.numel()) for name, p in self.model.named_parameters()]

    def _unflatten(self, x: Tensor) -> dict[str, Tensor]:
        params, offset = {}, 0
        for name, shape, size in self._layout:
            params[name] = x[offset : offset + size].view(shape)
            offset += size
        return params

    def _masked_loss(self, x: Tensor, xb: Tensor, yb: Tensor, mask: Tensor) -> Tensor:
        out = functional_call(self.model, self._unflatten(x), (xb,))
        per_example = self.loss(out, yb, reduction="none")
        return (per_example * mask).sum() / mask.sum().clamp(min=1.0)

    def _vmap_grads(self, batch: Batch) -> tuple[Tensor, Tensor]:
        idx, mask = batch.padded(self.sizes, self.device)
        xb, yb = self._gather(idx)
        if self.private is not None:
            return self._private_grads(batch, xb, yb, mask)
        g, value = vmap(grad_and_value(self._masked_loss))(self.x, xb, yb, mask)
        if not all(batch.flags):
            g.mul_(batch.active[:, None])
        return value.tolist(), g

    def _private_grads(self, batch: Batch, xb: Tensor, yb: Tensor, mask: Tensor):
        """The cohort's clipped sums as one batched computation, then each active client's
        noise from its own generator, over its expected batch size (as one client alone)."""
        expected = torch.tensor(self.expected, device=self.device)
        means, totals = self.private.cohort(
            self._unflatten, self.loss, self.x, xb, yb, mask, expected
        )
        g = torch.zeros_like(self.x)
        for c in batch.clients:
            g[c] = self.private.noisy(means[c], self.expected[c], self.gens[c])
        return [float(t) / max(1, k) for t, k in zip(totals, batch.sizes, strict=True)], g


def replicas(model: nn.Module) -> list[nn.Module]:
    """One copy of the model per intra-op thread torch would use (the model itself first),
    made once per model object."""
    if not hasattr(model, "replicas"):
        n = torch.get_num_threads()
        bind(model, model.flat_buffer)  # views of its own d floats, so that is what is copied
        model.replicas = [model] + [copy.deepcopy(model) for _ in range(n - 1)]
    return model.replicas


@cache
def say_no_vmap() -> None:
    """Tell once per process why a batched cohort runs through the model, not vmap."""
    print(
        "fedsim: a model with running statistics (BatchNorm buffers): cohorts run their clients"
        " through the model, not as one vmap (it cannot update the statistics in place)",
        file=sys.stderr,
    )


def losses(data: list[float], reg: list[float], flags: list[bool]) -> Tensor:
    """[C] float64: each active client's data loss plus its regularizer, 0 for the others."""
    return torch.tensor(
        [d + r if on else 0.0 for d, r, on in zip(data, reg, flags, strict=True)],
        dtype=torch.float64,
    )


def minibatches(
    n: int, batch_size: int, steps: int, gen: torch.Generator
) -> Iterator[Tensor | None]:
    """`steps` index batches (on the host) from consecutive shuffled epochs (None = full batch).

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
        yield perm[pos : pos + batch_size]
        pos += batch_size


@lru_cache(maxsize=4)
def _model(model_json: str, in_features: int, classes: int, device: str, dp: str) -> nn.Module:
    """One model object (and flat buffer) per process, architecture and DP-SGD setting;
    under DP-SGD it carries its private gradients (hooks on its layers) (`dp` is its JSON)."""
    keep_freed_memory()  # the steps' temporaries stay in the process (fedsim/allocator.py)
    cfg = ModelConfig.model_validate_json(model_json)
    model = build_model(cfg, in_features, classes, seed=0).to(device)
    model.flat_buffer = flat_params(model)
    model.private = None
    if dp:
        s = json.loads(dp)
        model.private = PrivateGradients(model, s["sigma"], s["c"])
    return model


@lru_cache(maxsize=1024)
def shard_for(spec_text: str, partition_id: int) -> Shard:
    """A partition's examples on the device (loaded once per process)."""
    spec = RoundSpec.parse(spec_text)
    x, y, l2 = client_data(spec.data, spec.seed, partition_id)
    dev = spec.device
    return Shard(torch.as_tensor(x, device=dev), torch.as_tensor(y, device=dev), float(l2))


def cohort_for(spec_text: str, partitions: list[int], vectorize: bool = False) -> Cohort:
    """The cohort of these partitions under the round's spec (model and data cached). One
    client's cohort is kept for the next round, as the sequential path meets the same
    clients again; a batched cohort (holding its padded examples) only briefly."""
    key = (spec_text, tuple(partitions), vectorize)
    return _single(*key) if len(partitions) == 1 else _batched(*key)


def _cohort(spec_text: str, partitions: tuple[int, ...], vectorize: bool) -> Cohort:
    spec = RoundSpec.parse(spec_text)
    ds = load_dataset(spec.data, spec.seed)
    priv = spec.privacy
    dp = ""
    if priv.mechanism == "dp_sgd":
        dp = json.dumps({"sigma": priv.noise_multiplier, "c": priv.max_grad_norm})
    model = _model(
        spec.model.model_dump_json(), ds.x_train.shape[1], ds.num_classes, spec.device, dp
    )
    shards = [shard_for(spec_text, pid) for pid in partitions]
    return Cohort(model, shards, ds.num_classes, vectorize)


@lru_cache(maxsize=4)
def initial_buffers(spec_text: str) -> Tensor:
    """The model's float buffers as built from the run's seed (as the server evaluates
    with): where each client's own start under `model.buffers = "local"`."""
    spec = RoundSpec.parse(spec_text)
    ds = load_dataset(spec.data, spec.seed)
    return flat_buffers(build_model(spec.model, ds.x_train.shape[1], ds.num_classes, spec.seed))


_single = lru_cache(maxsize=1024)(_cohort)
_batched = lru_cache(maxsize=2)(_cohort)
