"""DP-SGD's private gradient by book-keeping clipping (Bu et al., 2023): per-example
gradients of a linear layer are never formed.

One forward pass keeps each layer's input a; one backward pass, to the layers' outputs
only, gives each example's output gradient g. An example's weight gradient is g_i^T a_i, so
its squared norm is ||g_i||^2 ||a_i||^2 for a Linear layer on vectors; convolutions (and
Linear layers on sequences) form the small per-example products; a GroupNorm's are per
channel, the sums over positions of g x_hat and of g. With w_i = min(1, C /
||grad_i||), the clipped sum of a layer is one product (w * g)^T a. The result is the
noisy mean (sum_i w_i grad_i + N(0, sigma^2 C^2 I)) / (q n), as Opacus's DPOptimizer has
it; tests hold it to a per-example loop and to Opacus's own clipped sum.

The same math runs for one client through autograd, and for a cohort of clients as one
batched computation (torch.func: vmap over clients, grad to the layers' outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad
from torch.linalg import vecdot
from torch.nn.modules.batchnorm import _BatchNorm

LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm)  # the layers with parameters DP-SGD clips here


def trains(module: nn.Module) -> bool:
    """Whether the module holds trainable parameters of its own (a GroupNorm without affine
    ones, a ReLU, a container: nothing to clip)."""
    return any(p.requires_grad for p in module.parameters(recurse=False))


def mixes_examples(module: nn.Module) -> bool:
    """Whether the module itself makes an example's output or state depend on other examples
    (BatchNorm's batch statistics, running statistics in float buffers)."""
    own = module.buffers(recurse=False)
    return isinstance(module, _BatchNorm) or any(b.is_floating_point() for b in own)


def unsupported(model: nn.Module) -> str | None:
    """Why this model's per-example gradients cannot be clipped here (None: they can)."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if mixes_examples(module):
            return (
                f"layer {name!r} is a {kind}: its batch and running statistics mix examples,"
                " which per-example clipping cannot bound (use GroupNorm)"
            )
        if not trains(module):
            continue
        if not isinstance(module, LAYERS):
            return f"layer {name!r} is a {kind} (DP-SGD clips Linear, Conv2d and GroupNorm layers)"
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros"
        ):
            return f"layer {name!r}: Conv2d with groups, string padding or non-zero padding mode"
    return None


def clip_weights(squared_norms: Tensor, c: float, scale: Tensor | float) -> Tensor:
    """scale_i min(1, C / (||grad_i|| + 1e-6)) (Opacus's clipping factor); scale carries the
    division by the expected batch size, and 0 on padding."""
    return (c / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0) * scale


def layer_terms(layer: nn.Module, a: Tensor, g: Tensor):
    """([B] squared per-example norms of the layer's gradient, weights -> {param: clipped sum})
    from its input a and output gradient g (one client's batch of B examples)."""
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear) and a.dim() == 2:  # ghost norm: nothing per example
        aa = vecdot(a, a)
        sq = vecdot(g, g) * (aa + 1.0 if bias else aa)

        def sums(w: Tensor) -> dict[str, Tensor]:  # the weights scale the narrower factor
            if g.shape[1] < a.shape[1]:
                weight = (g * w[:, None]).t() @ a
            else:
                weight = g.t() @ (a * w[:, None])
            return {"weight": weight, "bias": w @ g} if bias else {"weight": weight}

        return sq, sums
    if isinstance(layer, nn.GroupNorm):  # per channel: sum over positions of g x_hat, of g
        x_hat = nn.functional.group_norm(a, layer.num_groups, eps=layer.eps)
        g, x_hat = g.reshape(*g.shape[:2], -1), x_hat.reshape(*a.shape[:2], -1)
        per_w, per_b = vecdot(g, x_hat), g.sum(2)  # [B, C] each
        sq = vecdot(per_w, per_w) + vecdot(per_b, per_b)
        return sq, lambda w: {"weight": w @ per_w, "bias": w @ per_b}
    if isinstance(layer, nn.Linear):  # [B, ..., in]: each example a sequence of T
        g, a = g.flatten(1, -2).transpose(1, 2), a.flatten(1, -2)  # [B, out, T], [B, T, in]
    else:  # Conv2d as a product over its L input patches
        g, a = g.flatten(2), patches(a, layer).transpose(1, 2)  # [B, out, L], [B, L, k]
    per = (g @ a).flatten(1)  # [B, out k]: small for these layers
    gb = g.sum(2)
    sq = vecdot(per, per) + (vecdot(gb, gb) if bias else 0.0)
    shape = layer.weight.shape

    def sums(w: Tensor) -> dict[str, Tensor]:
        weight = (w @ per).view(shape)
        return {"weight": weight, "bias": w @ gb} if bias else {"weight": weight}

    return sq, sums


def patches(a: Tensor, conv: nn.Conv2d) -> Tensor:
    """[B, Cin kh kw, L]: the input patch of each of the L output positions (F.unfold's
    layout, copied from a strided view: twice as fast as unfold here)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = (
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        conv.padding,
    )
    windows = nn.functional.pad(a, (pw, pw, ph, ph))
    windows = windows.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    windows = windows[..., ::dh, ::dw]  # [B, Cin, Ho, Wo, kh, kw]
    b, cin, ho, wo = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(b, cin * kh * kw, ho * wo)


def clipped_sum(
    layers: dict[str, nn.Module],
    order: list[tuple[str, str]],
    inputs: dict[str, Tensor],
    out_grads: dict[str, Tensor],
    c: float,
    scale: Tensor | float,
) -> Tensor:
    """sum_i scale_i w_i grad_i as one flat vector in the model's parameter order."""
    terms = {
        name: layer_terms(layer, inputs[name], out_grads[name]) for name, layer in layers.items()
    }
    w = clip_weights(sum(sq for sq, _ in terms.values()), c, scale)
    sums = {name: fn(w) for name, (_, fn) in terms.items()}
    return torch.cat([sums[layer][param].reshape(-1) for layer, param in order])


class PrivateGradients:
    """DP-SGD's noisy clipped gradients for one model: `__call__` for one client's batch
    (autograd), `cohort` for a cohort's stacked parameters and padded batches (vmap).

    Forward hooks on the model's Linear, Conv2d and GroupNorm layers keep each layer's input
    and its output (autograd) or add a given zero tap to the output (torch.func), where the
    output gradient is taken; with no taps set the hooks do nothing (evaluation, plain
    training)."""

    def __init__(self, model: nn.Module, sigma: float, c: float) -> None:
        why = unsupported(model)
        if why:
            raise ValueError(f"privacy.mechanism: 'dp_sgd' cannot clip this model: {why}")
        self.model, self.sigma, self.c = model, sigma, c
        self.layers = {
            n: m for n, m in model.named_modules() if isinstance(m, LAYERS) and trains(m)
        }
        self.order = [tuple(n.rpartition(".")[::2]) for n, _ in model.named_parameters()]
        self.sizes = [p.numel() for p in model.parameters()]
        self.taps: dict[str, Tensor] | None = None
        self.inputs: dict[str, Tensor] = {}
        self.shapes: dict[tuple, dict[str, torch.Size]] = {}
        for name, layer in self.layers.items():
            layer.register_forward_hook(partial(self._hook, name))

    def _hook(self, name: str, layer: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
        if self.taps is None:
            return None
        if name in self.inputs:  # its input and output gradient would be the last call's
            raise ValueError(
                f"privacy.mechanism 'dp_sgd': layer {name!r} runs twice in one forward pass,"
                " which per-example clipping here does not cover"
            )
        self.inputs[name] = args[0].detach()
        tap = self.taps.get(name)
        if tap is None:  # autograd: the gradient is taken at the output itself
            self.taps[name] = out
            return None
        return out + tap  # torch.func: at a zero tap added to it

    def noisy(self, mean: Tensor, expected: float, gen: torch.Generator | None) -> Tensor:
        """mean + N(0, (sigma C / expected)^2 I), in place: the clipped sum over the expected
        batch size plus the sum's noise N(0, sigma^2 C^2 I) over it. Drawn on the CPU, where
        the clients' generators live (fedsim/seeding.py), then moved: the same numbers on any
        device (CUDA refuses a CPU generator)."""
        if not self.sigma:
            return mean
        noise = torch.randn(mean.shape, generator=gen).to(mean.device)
        return mean.add_(noise, alpha=self.sigma * self.c / expected)

    def __call__(
        self, loss_of, xb: Tensor, yb: Tensor, expected: float, gen: torch.Generator | None
    ) -> tuple[float, Tensor]:
        """(data loss, flat private gradient) of the model on the Poisson batch (xb, yb) of
        expected size `expected`; `loss_of(out, y, reduction)`."""
        if len(yb) == 0:  # an empty Poisson batch: the step is noise alone
            summed = torch.zeros(sum(self.sizes), device=xb.device)
            value = 0.0
        else:
            self.taps = {}
            try:
                per_example = loss_of(self.model(xb), yb, reduction="none")
            finally:
                taps, inputs, self.taps, self.inputs = self.taps, self.inputs, None, {}
            total = per_example.sum()
            out_grads = torch.autograd.grad(total, list(taps.values()))
            value = float(total.detach()) / len(yb)
            out_grads = dict(zip(taps, out_grads, strict=True))
            summed = clipped_sum(self.layers, self.order, inputs, out_grads, self.c, 1 / expected)
        return value, self.noisy(summed, expected, gen)

    def cohort(
        self,
        unflatten: Callable[[Tensor], dict[str, Tensor]],
        loss_of,
        x: Tensor,
        xb: Tensor,
        yb: Tensor,
        mask: Tensor,
        expected: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """([C, d] clipped sums over each client's expected batch size, [C] summed losses) for
        stacked parameters x [C, d] on padded batches xb [C, B, ...], yb [C, B] with mask
        [C, B]: one batched computation. Noise is each client's own (`noisy`)."""
        shapes = self._tap_shapes(xb.shape[1:])

        def one(xi: Tensor, xbi: Tensor, ybi: Tensor, mi: Tensor, ei: Tensor):
            params = unflatten(xi)

            def loss(taps: dict[str, Tensor]):
                self.taps = taps
                try:
                    out = functional_call(self.model, params, (xbi,))
                finally:
                    inputs, self.taps, self.inputs = self.inputs, None, {}
                total = (loss_of(out, ybi, reduction="none") * mi).sum()
                return total, ({k: v.detach() for k, v in inputs.items()}, total.detach())

            taps = {k: torch.zeros(s, device=xi.device) for k, s in shapes.items()}
            out_grads, (inputs, total) = grad(loss, has_aux=True)(taps)
            summed = clipped_sum(self.layers, self.order, inputs, out_grads, self.c, mi / ei)
            return summed, total

        return torch.vmap(one)(x, xb, yb, mask, expected)

    def _tap_shapes(self, batch_shape: torch.Size) -> dict[str, torch.Size]:
        """Each layer's output shape for one client's padded batch (a dry run, cached)."""
        key = tuple(batch_shape)
        if key not in self.shapes:
            self.taps = {}
            try:
                with torch.no_grad():
                    self.model(
                        torch.zeros(batch_shape, device=next(self.model.parameters()).device)
                    )
            finally:
                taps, self.taps, self.inputs = self.taps, None, {}
            self.shapes[key] = {k: t.shape for k, t in taps.items()}
        return self.shapes[key]
