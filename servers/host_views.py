"""What each backbone host has seen, and the label-leakage attacks a host can run on it
(privacy/attacks.py): on each message alone, on the shards of one call together (pairing,
span), and with the adapter weights it was sent (the difference between two adapter sets'
activations, and between consecutive updates of one set, which the host computes itself
with the frozen backbone it already has). The labels are kept beside each call only to
score the attacks; no host ever receives them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from torch import Tensor

from fedsim.privacy import attacks
from fedsim.privacy.backbone import BackboneSpec
from fedsim.privacy.split import BackboneHost, Theta


@dataclass
class Call:
    """One query as its host saw it: step, kind, adapter slot, inputs, adapter weights, and
    the activations it returned (forward) or the gradient shard it received (backprop)."""

    step: int
    kind: str  # "act" (a forward's reply) or "grad" (a backprop's shard)
    adapter: int
    x: dict[str, Tensor]
    theta: Theta
    value: np.ndarray
    labels: np.ndarray


class HostViews:
    """Every host's calls since the last checkpoint; `leak` scores each attack's worst value
    over hosts, adapter sets and pairs, then forgets the window."""

    def __init__(self, spec: BackboneSpec) -> None:
        self.spec = spec
        self.calls: dict[int, list[Call]] = defaultdict(list)

    def add(self, node: int, call: Call) -> None:
        self.calls[node].append(call)

    def leak(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for calls in self.calls.values():
            for name, value in self._host(calls).items():
                keep_worst(out, name, value)
        self.calls.clear()
        out["leak"] = max((v for k, v in out.items() if k.startswith("leak_")), default=0.5)
        return out

    @property
    def backbone(self) -> BackboneHost:
        """The attacker's copy of the frozen backbone (loaded on first use)."""
        if not hasattr(self, "_backbone"):
            self._backbone = BackboneHost(self.spec)
        return self._backbone

    def _host(self, calls: list[Call]) -> dict[str, float]:
        out: dict[str, float] = {}
        by_kind = defaultdict(list)  # (kind, adapter) -> calls
        for c in calls:
            by_kind[(c.kind, c.adapter)].append(c)
        for (kind, _), group in by_kind.items():  # each message alone
            v, y = stack(group)
            keep_worst(out, f"leak_{kind}_norm", attacks.leak(attacks.norm_attack(v), y))
            keep_worst(out, f"leak_{kind}_spectral", attacks.leak(attacks.spectral_attack(v), y))
            if kind == "grad":
                direction = attacks.direction_attack(v, int(np.argmax(y == y.max())))
                keep_worst(out, "leak_grad_direction", attacks.leak(direction, y))
            else:
                keep_worst(out, "kmeans_act", attacks.kmeans_accuracy(v, y))
        self._shards(calls, out)
        self._recomputed(calls, out)
        return out

    def _shards(self, calls: list[Call], out: dict[str, float]) -> None:
        """Pairing (the sum of a call's shards: g_h itself when the weights are 1/2, 1/2) and
        span (the unsupervised best combination, scored call by call)."""
        shards = defaultdict(list)  # one backprop call: (step, adapter) -> its shards here
        for c in calls:
            if c.kind == "grad":
                shards[(c.step, c.adapter)].append(c)
        for adapter in sorted({a for _, a in shards}):  # each set's gradients scale their own way
            paired = [g for (_, a), g in shards.items() if a == adapter and len(g) > 1]
            if not paired:
                continue
            v = np.concatenate([sum(c.value for c in g) for g in paired])
            y = np.concatenate([g[0].labels for g in paired])
            span = [
                attacks.leak(
                    attacks.spectral_attack(attacks.span_attack(np.stack([c.value for c in g]))),
                    g[0].labels,
                )
                for g in paired
            ]
            keep_worst(out, "leak_pairing_spectral", attacks.leak(attacks.spectral_attack(v), y))
            keep_worst(out, "leak_pairing_norm", attacks.leak(attacks.norm_attack(v), y))
            keep_worst(out, "leak_span_spectral", float(np.mean(span)))

    def _recomputed(self, calls: list[Call], out: dict[str, float]) -> None:
        """Activations the host computes itself from weights it was sent: h_a - h_b for every
        two adapter sets (their latest weights, on every input of the window; unsupervised
        and with a probe on 20 known labels), and forward(x_t, theta_t') - forward(x_t,
        theta_t) for consecutive weights theta_t, theta_t' of one set."""
        latest: dict[int, Call] = {}
        inputs: dict[int, Call] = {}  # step -> a call carrying that step's batch
        for c in calls:
            inputs.setdefault(c.step, c)
            if c.adapter not in latest or c.step >= latest[c.adapter].step:
                latest[c.adapter] = c
        batches = list(inputs.values())
        y = np.concatenate([c.labels for c in batches])
        if len(latest) > 1:
            h = {a: self._forward(batches, c) for a, c in latest.items()}
            for a, b in combinations(sorted(h), 2):
                diff = h[a] - h[b]
                keep_worst(
                    out, "leak_actdiff_spectral", attacks.leak(attacks.spectral_attack(diff), y)
                )
                keep_worst(out, "leak_actdiff_probe", attacks.probe_leak(diff, y))
        for adapter in latest:
            seen = sorted({c.step: c for c in calls if c.adapter == adapter}.items())
            diffs, labels = [], []
            for (_, before), (_, after) in zip(seen, seen[1:], strict=False):
                diffs.append(self._forward([before], after) - self._forward([before], before))
                labels.append(before.labels)
            if diffs:  # their label direction drifts: oriented step to step
                scores = attacks.oriented_spectral_attack(diffs)
                update = attacks.leak(scores, np.concatenate(labels))
                keep_worst(out, "leak_update_spectral", update)

    def _forward(self, batches: list[Call], weights: Call) -> np.ndarray:
        """forward(x, theta) on the batches' inputs with the weights of `weights`' call."""
        slot = f"a{weights.adapter}"
        return np.concatenate(
            [self.backbone.forward(c.x, slot, weights.theta).numpy() for c in batches]
        )


def keep_worst(out: dict[str, float], name: str, value: float) -> None:
    """out[name] = the worst (largest) value seen for that attack."""
    out[name] = max(out.get(name, 0.0), value)


def stack(calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """The calls' per-sample values and labels, concatenated."""
    return np.concatenate([c.value for c in calls]), np.concatenate([c.labels for c in calls])


def snapshot(theta: Theta) -> Theta:
    """A copy of adapter weights as sent (the label party updates its own in place)."""
    return {k: v.detach().clone() for k, v in theta.items()}
