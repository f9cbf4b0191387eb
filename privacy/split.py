"""P3EFT's building blocks (ALGORITHMS.md section 7): a backbone host's two stateless calls on
a frozen `transformers` encoder carrying n named PEFT LoRA adapters, and the label party's
private backpropagation (backprop is linear in g_h, so shards of it recombine exactly)."""

from __future__ import annotations

import torch
from peft import LoraConfig
from torch import Tensor, nn

Theta = dict[str, Tensor]  # one adapter set's weights, keyed by parameter name sans adapter


class BackboneHost:
    """The frozen encoder with adapters "a0".."a{n-1}" (LoRA dropout 0); it keeps no state
    between calls: every call brings the adapter weights it is to use."""

    def __init__(self, model: nn.Module, adapters: int, rank: int = 16, alpha: int = 32) -> None:
        lora = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=["query", "value"]
        )
        for i in range(adapters):
            model.add_adapter(lora, adapter_name=f"a{i}")
        self.model = model.eval()  # no dropout anywhere: calls are deterministic
        self.params = {
            f"a{i}": {
                name.replace(f".a{i}.", "."): p
                for name, p in model.named_parameters()
                if f".a{i}." in name
            }
            for i in range(adapters)
        }
        self.init = {
            a: {k: p.detach().clone() for k, p in ps.items()} for a, ps in self.params.items()
        }

    def initial(self, adapter: str) -> Theta:
        """The adapter's freshly initialised weights (LoRA B = 0: the backbone's own output)."""
        return {k: v.clone() for k, v in self.init[adapter].items()}

    def _activations(self, x: dict[str, Tensor], adapter: str, theta: Theta) -> Tensor:
        self.model.set_adapter(adapter)
        params = self.params[adapter]
        with torch.no_grad():
            for k, v in theta.items():
                params[k].copy_(v)
        out = self.model(**x).last_hidden_state
        return out[:, 0]  # the first token's hidden state

    def forward(self, x: dict[str, Tensor], adapter: str, theta: Theta) -> Tensor:
        """h = forward(x, theta)."""
        with torch.no_grad():
            return self._activations(x, adapter, theta)

    def backprop(self, x: dict[str, Tensor], adapter: str, theta: Theta, g_h: Tensor) -> Theta:
        """g_theta = (dh/dtheta)^T g_h: linear in g_h."""
        h = self._activations(x, adapter, theta)
        keys = list(self.params[adapter])
        grads = torch.autograd.grad(h, [self.params[adapter][k] for k in keys], grad_outputs=g_h)
        return dict(zip(keys, grads, strict=True))


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
