"""P3EFT building blocks on a tiny randomly initialised BERT: private backpropagation over
two hosts recombines to the plain gradient; hosts are stateless; randomized response (label
DP) keeps and moves labels at its rates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.privacy.backbone import BackboneSpec, adapter_init
from fedsim.privacy.split import (
    BackboneHost,
    keep_probability,
    mix,
    mixing_weights,
    private_shards,
    randomized_response,
    recombine,
)

SPEC = BackboneSpec("tiny-bert", vocab=95, seed=0, adapters=2, rank=4, alpha=8)


def host() -> BackboneHost:
    return BackboneHost(SPEC)  # the same frozen weights on every host (seeded)


def random_theta(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in adapter_init(SPEC, gen)[0].items()
    }


@pytest.mark.parametrize("m", [2, 3])
def test_private_backprop_over_two_hosts_recombines_to_the_plain_gradient(m):
    hosts = [host(), host()]
    gen = torch.Generator().manual_seed(1)
    x = {"input_ids": torch.randint(0, 100, (6, 10), generator=gen)}
    theta = random_theta(gen)
    g_h = torch.randn(6, 64, generator=gen)
    plain = hosts[0].backprop(x, "a1", theta, g_h)
    shards, weights = private_shards(g_h, m, gen)
    assert all((s - g_h).norm() > 3 * g_h.norm() for s in shards)  # a host sees mostly noise
    grads = [hosts[j % 2].backprop(x, "a1", theta, s) for j, s in enumerate(shards)]
    private = recombine(grads, weights)
    for k, g in plain.items():
        torch.testing.assert_close(private[k], g, rtol=1e-3, atol=1e-4 * float(g.abs().max()))


def test_a_host_keeps_no_state_between_calls():
    h = host()
    gen = torch.Generator().manual_seed(2)
    x = {"input_ids": torch.randint(0, 100, (4, 8), generator=gen)}
    theta = random_theta(gen)
    first = h.forward(x, "a0", theta)
    h.forward(x, "a0", random_theta(gen))  # another caller's weights in between
    torch.testing.assert_close(h.forward(x, "a0", theta), first)
    fresh = adapter_init(SPEC, gen)
    at_init = [h.forward(x, f"a{i}", fresh[i]) for i in (0, 1)]
    torch.testing.assert_close(at_init[0], at_init[1])  # LoRA B = 0: both are the backbone
    assert not torch.allclose(first, at_init[0])  # and adapters do change the activations


def test_mixed_activations_equal_the_backbone_at_initialisation():
    h = host()
    gen = torch.Generator().manual_seed(3)
    x = {"input_ids": torch.randint(0, 100, (5, 8), generator=gen)}
    w = mixing_weights(2, 64, gen, scale=5.0)
    torch.testing.assert_close(w.sum(0), torch.ones(64))
    assert w.abs().max() > 2  # each weight alone is far from 1/n
    fresh = adapter_init(SPEC, gen)
    hs = [h.forward(x, f"a{i}", fresh[i]) for i in (0, 1)]
    torch.testing.assert_close(mix(w, hs), hs[0], rtol=1e-5, atol=1e-5)


def test_the_installed_transformers_and_peft_build_the_lora_backbone():
    """Fails loudly (never skips) when the installed transformers/peft pair cannot build the
    host's model: named LoRA adapters through PEFT's API, each one selectable, each one
    changing the activations only when its own weights do."""
    import peft
    import transformers

    versions = f"transformers {transformers.__version__}, peft {peft.__version__}"
    spec = BackboneSpec("tiny-bert", 20, 0, 2, 4, 8)
    try:
        host = BackboneHost(spec)
    except Exception as err:  # any failure here is the incompatibility
        pytest.fail(f"{versions} cannot build the LoRA backbone: {err!r}")
    thetas = adapter_init(spec, torch.Generator().manual_seed(0))
    assert set(host.params) == {"a0", "a1"}
    assert all(t.keys() == host.params["a0"].keys() for t in thetas), versions
    x = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4).long()}
    bumped = {k: v + 0.5 for k, v in thetas[0].items()}  # B != 0: the adapter now acts
    plain = host.forward(x, "a0", thetas[0])
    assert torch.equal(host.forward(x, "a1", thetas[0]), plain), versions  # same weights
    assert not torch.allclose(host.forward(x, "a0", bumped), plain), versions
    grads = host.backprop(x, "a1", bumped, torch.ones_like(plain))
    assert grads.keys() == thetas[1].keys() and all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("classes,epsilon", [(2, 1.0), (3, 0.5)])
def test_randomized_response_keeps_each_label_at_its_rate_and_moves_it_uniformly(classes, epsilon):
    y = np.arange(60_000) % classes
    noisy = randomized_response(y, classes, epsilon, seed=5)
    keep = math.exp(epsilon) / (math.exp(epsilon) + classes - 1)
    assert keep_probability(classes, epsilon) == pytest.approx(keep)
    kept = float((noisy == y).mean())
    assert abs(kept - keep) < 3 * math.sqrt(keep * (1 - keep) / len(y))
    for c in range(classes):  # a moved label lands on each other class equally often
        moved = noisy[(y == c) & (noisy != y)]
        counts = np.bincount(moved, minlength=classes)
        assert counts[c] == 0 and np.ptp(counts[np.arange(classes) != c]) < 0.1 * len(moved)
    # the DP ratio: P(output o | label a) / P(output o | label b) <= e^eps for all a, b, o
    worst = keep / ((1 - keep) / (classes - 1))
    assert worst == pytest.approx(math.exp(epsilon))
    np.testing.assert_array_equal(noisy, randomized_response(y, classes, epsilon, seed=5))
