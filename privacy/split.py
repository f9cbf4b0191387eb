"""P3EFT's building blocks (docs/algorithms.md section 7): a backbone host's two stateless
calls on a frozen `transformers` encoder carrying n named PEFT LoRA adapters, the label party's
private backpropagation (backprop is linear in g_h, so shards of it recombine exactly), its
secret activation mixing, and label DP by randomized response."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord
from torch import Tensor, nn

from fedsim.codecs import pack, unpack

from .backbone import BackboneSpec, adapter_params, load_backbone, set_adapter

Theta = dict[str, Tensor]  # one adapter set's weights, keyed by parameter name sans adapter

# The two calls' arrays: token inputs, the activation gradient (or one shard of it) in a
# backprop query, and the activations a forward query returns; adapter weights by name.
INPUTS = ("input_ids", "attention_mask")
GRAD, ACTIVATIONS = "g", "h"


def tensors(rec: ArrayRecord, keys) -> dict[str, torch.Tensor]:
    """Writable tensors of the named arrays of a query or reply."""
    return {k: torch.from_numpy(np.array(unpack(rec[k]))) for k in keys}


def arrays(values: dict[str, torch.Tensor]) -> ArrayRecord:
    """The arrays of a query or reply (off the device where they are on one)."""
    return ArrayRecord({k: pack(v.detach().cpu().numpy()) for k, v in values.items()})


class BackboneHost:
    """The frozen encoder with adapter slots "a0".."a{n-1}" on `device`; it keeps no state
    between calls: every call brings the adapter weights it is to use (moved there)."""

    def __init__(self, spec: BackboneSpec, device: str = "cpu") -> None:
        self.spec, self.device = spec, torch.device(device)
        self.model = load_backbone(spec).to(self.device)
        self.params = {f"a{i}": adapter_params(self.model, f"a{i}") for i in range(spec.adapters)}
        self.active = ""

    def _activations(self, x: dict[str, Tensor], adapter: str, theta: Theta) -> Tensor:
        if adapter != self.active:  # PEFT's switch walks every module: only when it changes
            set_adapter(self.model, adapter)
            self.active = adapter
        params = self.params[adapter]
        if theta.keys() != params.keys():
            raise ValueError(f"adapter weights do not match the backbone's {adapter} slot")
        with torch.no_grad():
            for k, v in theta.items():
                params[k].copy_(v)
        x = {k: v.to(self.device) for k, v in x.items()}
        mask = x.get("attention_mask", torch.ones_like(x["input_ids"]))  # as transformers does
        return mean_pool(self.model(**x).last_hidden_state, mask)

    def forward(self, x: dict[str, Tensor], adapter: str, theta: Theta) -> Tensor:
        """h = forward(x, theta)."""
        with torch.no_grad():
            return self._activations(x, adapter, theta)

    def backprop(self, x: dict[str, Tensor], adapter: str, theta: Theta, g_h: Tensor) -> Theta:
        """g_theta = (dh/dtheta)^T g_h: linear in g_h."""
        keys = list(self.params[adapter])
        with torch.enable_grad():
            h = self._activations(x, adapter, theta)
            params = [self.params[adapter][k] for k in keys]
            grads = torch.autograd.grad(h, params, g_h.to(self.device))
        return dict(zip(keys, grads, strict=True))


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The sentence's activation: its tokens' last hidden states averaged (padding left out).
    Unlike the first token's state it varies with every word even in a backbone that was
    never trained to summarise into [CLS], so frozen features are informative."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def private_shards(g_h: Tensor, m: int, gen: torch.Generator, scale: float = 10.0):
    """m tensors g^j and secret weights a_j with sum_j a_j g^j = g_h, each g^j dominated by
    noise `scale` times g_h's RMS (m = 2: g_h + z, g_h - z with a = 1/2, 1/2)."""
    std = scale * float(g_h.pow(2).mean().sqrt()) + 1e-12
    if m == 2:
        z = std * torch.randn(g_h.shape, generator=gen, dtype=g_h.dtype)
        return [g_h + z, g_h - z], torch.tensor([0.5, 0.5], dtype=g_h.dtype)
    a = 0.5 + torch.rand(m, generator=gen, dtype=g_h.dtype)
    shards = [std * torch.randn(g_h.shape, generator=gen, dtype=g_h.dtype) for _ in range(m - 1)]
    rest = g_h - sum(a[j] * shards[j] for j in range(m - 1))
    return [*shards, rest / a[m - 1]], a


def recombine(grads: list[Theta], weights: Tensor) -> Theta:
    """g_theta = sum_j a_j backprop(x, theta, g^j)."""
    return {k: sum(w * g[k] for w, g in zip(weights, grads, strict=True)) for k in grads[0]}


def mixing_weights(n: int, d: int, gen: torch.Generator, scale: float = 1.0) -> Tensor:
    """Secret W_1..W_n in R^d, W_i = 1/n + sum_{j>i} xi_ij - sum_{j<i} xi_ji with random xi:
    they sum to one, so h' = sum_i W_i * h_i is h while all adapters agree."""
    w = torch.full((n, d), 1.0 / n)
    for i in range(n):
        for j in range(i + 1, n):
            xi = scale * torch.randn(d, generator=gen)
            w[i] += xi
            w[j] -= xi
    return w


def mix(w: Tensor, hs: list[Tensor]) -> Tensor:
    """h' = sum_i W_i * h_i (elementwise, broadcast over the batch)."""
    return sum(wi * h for wi, h in zip(w, hs, strict=True))


def probe_regularizer(
    hs: list[Tensor], y: Tensor, probes: list[nn.Linear], steps: int = 10, lr: float = 0.2
) -> Tensor:
    """P3EFT's adversarial term: fit a linear probe y ~ h_i on each (detached) h_i, then
    score h_i by how well the probe predicts the wrong label (binary: BCE against 1 - y;
    multiclass: CE of the negated logits), so descending it hides y from each h_i alone."""
    total = hs[0].new_zeros(())
    for h, probe in zip(hs, probes, strict=True):
        fit = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9)
        for _ in range(steps):
            fit.zero_grad()
            label_loss(probe(h.detach()), y).backward()
            fit.step()
        logits = torch.func.functional_call(
            probe, {k: p.detach() for k, p in probe.named_parameters()}, (h,)
        )
        total = total + label_loss(-logits, y)  # binary: BCE(-z, y) = BCE(z, 1 - y)
    return total


def label_loss(logits: Tensor, y: Tensor) -> Tensor:
    """BCE-with-logits for one logit, cross-entropy otherwise."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


def distance_correlation(h: Tensor, y: Tensor, classes: int) -> Tensor:
    """Sample distance correlation between activations and one-hot labels (the DC baseline's
    regularizer: 0 iff independent in the population limit)."""

    def centred(z: Tensor) -> Tensor:
        d = torch.cdist(z, z)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(h), centred(F.one_hot(y, classes).float())
    dcov = (a * b).mean()
    return dcov.clamp_min(0).sqrt() / ((a * a).mean() * (b * b).mean()).pow(0.25).clamp_min(1e-12)


def randomized_response(y: np.ndarray, classes: int, epsilon: float, seed: int) -> np.ndarray:
    """Label DP by randomized response (Warner 1965; Ghazi et al., 2021): each label kept with
    probability e^eps / (e^eps + K - 1), else replaced by one of the K - 1 others uniformly.
    Any two labels give any output with probabilities within e^eps of each other, so
    everything computed from these labels (a host's whole view) is eps-label-DP, however
    long the training runs."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(y)) < keep_probability(classes, epsilon)
    other = (y + rng.integers(1, classes, size=len(y))) % classes  # one of the others
    return np.where(keep, y, other).astype(y.dtype)


def keep_probability(classes: int, epsilon: float) -> float:
    """P(randomized response keeps a label): e^eps / (e^eps + K - 1)."""
    return float(np.exp(epsilon) / (np.exp(epsilon) + classes - 1))
