"""What each backbone host has seen, and the label-leakage attacks a host can run on it
(privacy/attacks.py): on each message alone, on the shards of one call together (pairing,
span), and with the adapter weights it was sent (the difference between two adapter sets'
activations, and between consecutive updates of one set, which the host computes itself
with the frozen backbone it already has, and the adapter's own contribution to them). Each
attack that works on activations is also run on held-out inputs (the test split, which the
evaluation forwards carry) and on frozen-backbone features: the training value over the
held-out one is what a host reads of these examples' labels beyond what the adapters it
holds predict of any input, and the floor is what the inputs alone give. The labels are
kept beside each call only to score the attacks; no host ever receives them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from torch import Tensor

from fedsim.privacy import attacks
from fedsim.privacy.backbone import BackboneSpec, trimmed
from fedsim.privacy.split import BackboneHost, Theta

HELDOUT, FLOOR = "heldout_", "floor_"  # key prefixes: on held-out inputs, on frozen features
ATTACK_KEYS = ("leak", "kmeans", HELDOUT, FLOOR)  # the keys a run's summary keeps the worst of


@dataclass
class Call:
    """One query as its host saw it: step, kind, adapter slot, inputs, adapter weights, and
    the activations it returned (forward) or the gradient shard it received (backprop)."""

    step: int
    kind: str  # "act" (a forward's reply), "grad" (a backprop's shard), "eval" (a test forward)
    adapter: int
    x: dict[str, Tensor]
    theta: Theta
    value: np.ndarray
    labels: np.ndarray


@dataclass
class Views:
    """One host's window as its recomputed attacks use it: the training batches and labels,
    and forward(x, theta_latest) of each set it holds on them and on the held-out batches."""

    batches: list[Call]
    y: np.ndarray
    train: dict[int, np.ndarray]
    heldout: list[Call]
    held_y: np.ndarray
    held: dict[int, np.ndarray]


class HostViews:
    """Every host's calls since the last checkpoint; `leak` scores each attack's worst value
    over hosts, adapter sets and pairs, then forgets the window (not the first weights each
    host was sent of each set, which the drift-from-first attack compares against)."""

    def __init__(self, spec: BackboneSpec) -> None:
        self.spec = spec
        self.calls: dict[int, list[Call]] = defaultdict(list)
        self.first: dict[tuple[int, int], Theta] = {}  # (host, adapter set) -> first weights
        self.frozen: dict[tuple[bool, int], np.ndarray] = {}  # this window's, by batch

    def add(self, node: int, call: Call) -> None:
        self.calls[node].append(call)
        self.first.setdefault((node, call.adapter), call.theta)

    def leak(self) -> dict[str, float]:
        """Each attack's worst on the training examples (its own key), on held-out inputs
        (HELDOUT + key) and on frozen features (FLOOR + key); `leak`, `heldout_leak` and
        `floor_leak` are the worst of each kind's leak_ keys."""
        heldout = heldout_batches(self.calls)
        out: dict[str, float] = {}
        for node, calls in self.calls.items():
            for name, value in self._host(node, calls, heldout).items():
                keep_worst(out, name, value)
        self.calls.clear()
        self.frozen.clear()
        for prefix in ("", HELDOUT, FLOOR):
            leaks = [v for k, v in out.items() if k.startswith(f"{prefix}leak_")]
            out[f"{prefix}leak"] = max(leaks, default=0.5)
        return out

    @property
    def backbone(self) -> BackboneHost:
        """The attacker's copy of the frozen backbone (loaded on first use)."""
        if not hasattr(self, "_backbone"):
            self._backbone = BackboneHost(self.spec)
        return self._backbone

    def _host(self, node: int, calls: list[Call], heldout: list[Call]) -> dict[str, float]:
        """Every attack on one host's training calls, and on the held-out inputs with the
        latest weights it was sent of each set (the evaluation forwards are not attacked
        themselves: their inputs are the held-out set)."""
        out: dict[str, float] = {}
        train = [c for c in calls if c.kind != "eval"]
        latest: dict[int, Call] = {}  # adapter set -> its latest call here
        inputs: dict[int, Call] = {}  # step -> a call carrying that step's batch
        for c in train:
            inputs.setdefault(c.step, c)
            if c.adapter not in latest or c.step >= latest[c.adapter].step:
                latest[c.adapter] = c
        batches = list(inputs.values())
        views = Views(
            batches,
            labels(batches),
            {a: self._forward(batches, a, c.theta) for a, c in latest.items()},
            heldout,
            labels(heldout),
            {a: self._forward(heldout, a, c.theta) for a, c in latest.items()},
        )
        self._messages(train, views, out)
        self._shards(train, out)
        self._actdiff(views, out)
        self._drift(node, views, out)
        self._updates(train, latest, heldout, out)
        return out

    def _messages(self, calls: list[Call], views: Views, out: dict[str, float]) -> None:
        """Each message alone; activations also as the latest weights give them on held-out
        inputs, and as the frozen backbone gives them on the same training inputs."""
        by_kind = defaultdict(list)  # (kind, adapter) -> calls
        for c in calls:
            by_kind[(c.kind, c.adapter)].append(c)
        for (kind, adapter), group in by_kind.items():
            v, y = stack(group)
            if kind == "grad":
                keep_worst(out, "leak_grad_norm", attacks.leak(attacks.norm_attack(v), y))
                keep_worst(out, "leak_grad_spectral", attacks.leak(attacks.spectral_attack(v), y))
                direction = attacks.direction_attack(v, int(np.argmax(y == y.max())))
                keep_worst(out, "leak_grad_direction", attacks.leak(direction, y))
                continue
            held, floor = (views.held[adapter], views.held_y), (self._frozen(group), y)
            for name, attack in ACTIVATION_ATTACKS.items():
                keep_three(out, name, attacks.measured(attack, (v, y), held, floor))

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

    def _actdiff(self, views: Views, out: dict[str, float]) -> None:
        """h_a - h_b for every two adapter sets the host holds (their latest weights, on every
        input of the window; unsupervised and with a probe on 20 known labels)."""
        floor = (self._frozen(views.batches), views.y)
        for a, b in combinations(sorted(views.train), 2):
            train = (views.train[a] - views.train[b], views.y)
            held = (views.held[a] - views.held[b], views.held_y)
            for name, attack in DIFFERENCE_ATTACKS.items():
                keep_three(out, name, attacks.measured(attack, train, held, floor))

    def _drift(self, node: int, views: Views, out: dict[str, float]) -> None:
        """The adapter's contribution, forward(x, theta_latest) - forward(x, theta with every
        lora_B zeroed), and the drift from the first weights the host was sent of the set,
        forward(x, theta_latest) - forward(x, theta_first), on every input of the window;
        signed by 2-means (attacks.drift_attack)."""
        frozen, frozen_held = self._frozen(views.batches), self._frozen(views.heldout)
        floor = (frozen, views.y)
        for a in views.train:
            first = self.first[(node, a)]
            contributions = {
                "leak_drift_spectral": (frozen, frozen_held),
                "leak_drift_first_spectral": (
                    self._forward(views.batches, a, first),
                    self._forward(views.heldout, a, first),
                ),
            }
            for name, (base, base_held) in contributions.items():
                train = (views.train[a] - base, views.y)
                held = (views.held[a] - base_held, views.held_y)
                keep_three(out, name, attacks.measured(drift, train, held, floor))

    def _updates(
        self, calls: list[Call], latest: dict[int, Call], heldout: list[Call], out: dict
    ) -> None:
        """forward(x_t, theta_t') - forward(x_t, theta_t) for consecutive weights theta_t,
        theta_t' of one set; held out, the same pairs of weights on held-out batches in turn."""
        for adapter in latest:
            seen = [
                c for _, c in sorted({c.step: c for c in calls if c.adapter == adapter}.items())
            ]
            pairs = list(zip(seen, seen[1:], strict=False))
            if not pairs:
                continue
            held = [heldout[k % len(heldout)] for k in range(len(pairs))]
            train = [self._change(before, before, after) for before, after in pairs]
            moved = [self._change(x, b, a) for x, (b, a) in zip(held, pairs, strict=True)]
            floor = [self._frozen([before]) for before, _ in pairs]
            y = np.concatenate([before.labels for before, _ in pairs])
            three = attacks.measured(updates, (train, y), (moved, labels(held)), (floor, y))
            keep_three(out, "leak_update_spectral", three)

    def _change(self, x: Call, before: Call, after: Call) -> np.ndarray:
        """forward(x, theta_after) - forward(x, theta_before), for one set's two weights."""
        a = after.adapter
        return self._forward([x], a, after.theta) - self._forward([x], a, before.theta)

    def _forward(self, batches: list[Call], adapter: int, theta: Theta) -> np.ndarray:
        """forward(x, theta) on the batches' inputs, in the set's slot (the frozen features
        when every lora_B is zero: the adapter then adds exactly nothing)."""
        if not any(v.any() for k, v in theta.items() if ".lora_B." in k):
            return self._frozen(batches)
        slot = f"a{adapter}"
        return np.concatenate([self.backbone.forward(c.x, slot, theta).numpy() for c in batches])

    def _frozen(self, batches: list[Call]) -> np.ndarray:
        """Frozen-backbone features (every lora_B zeroed) of the batches; the same for every
        host and set, so each batch is computed once per window."""
        for c in batches:
            key = (c.kind == "eval", c.step)
            if key not in self.frozen:
                zeroed = {
                    k: v.zero_() if ".lora_B." in k else v for k, v in snapshot(c.theta).items()
                }
                self.frozen[key] = self.backbone.forward(c.x, f"a{c.adapter}", zeroed).numpy()
        return np.concatenate([self.frozen[(c.kind == "eval", c.step)] for c in batches])


def norm(v: np.ndarray, y: np.ndarray) -> float:
    """The leak of the per-sample norms."""
    return attacks.leak(attacks.norm_attack(v), y)


def spectral(v: np.ndarray, y: np.ndarray) -> float:
    """The leak of the top principal component."""
    return attacks.leak(attacks.spectral_attack(v), y)


def drift(v: np.ndarray, y: np.ndarray) -> float:
    """The leak of the top principal component signed by 2-means."""
    return attacks.leak(attacks.drift_attack(v), y)


def updates(parts: list[np.ndarray], y: np.ndarray) -> float:
    """The leak of per-step principal components oriented step to step."""
    return attacks.leak(attacks.oriented_spectral_attack(parts), y)


ACTIVATION_ATTACKS = {
    "leak_act_norm": norm,
    "leak_act_spectral": spectral,
    "kmeans_act": attacks.kmeans_accuracy,
}
DIFFERENCE_ATTACKS = {"leak_actdiff_spectral": spectral, "leak_actdiff_probe": attacks.probe_leak}


def heldout_batches(calls: dict[int, list[Call]]) -> list[Call]:
    """The held-out inputs the window's evaluation forwards carried (each test chunk once:
    set 0's), cut into batches of the training batch size and numbered 0, 1, ... (the keys
    of their frozen features)."""
    chunks = [c for cs in calls.values() for c in cs if c.kind == "eval" and c.adapter == 0]
    size = next(len(c.labels) for cs in calls.values() for c in cs if c.kind != "eval")
    out: list[Call] = []
    for c in chunks:
        for s in range(0, len(c.labels), size):
            x = trimmed({k: v[s : s + size] for k, v in c.x.items()})
            value, y = c.value[s : s + size], c.labels[s : s + size]
            out.append(Call(len(out), "eval", 0, x, c.theta, value, y))
    return out


def labels(calls: list[Call]) -> np.ndarray:
    return np.concatenate([c.labels for c in calls])


def keep_three(out: dict[str, float], name: str, measured: dict[str, float]) -> None:
    """keep_worst of an attack on the training examples, held-out inputs and frozen features."""
    keep_worst(out, name, measured["train"])
    keep_worst(out, HELDOUT + name, measured["heldout"])
    keep_worst(out, FLOOR + name, measured["floor"])


def keep_worst(out: dict[str, float], name: str, value: float) -> None:
    """out[name] = the worst (largest) value seen for that attack."""
    out[name] = max(out.get(name, 0.0), value)


def stack(calls: list[Call]) -> tuple[np.ndarray, np.ndarray]:
    """The calls' per-sample values and labels, concatenated."""
    return np.concatenate([c.value for c in calls]), np.concatenate([c.labels for c in calls])


def snapshot(theta: Theta) -> Theta:
    """A copy of adapter weights as sent (the label party updates its own in place)."""
    return {k: v.detach().clone() for k, v in theta.items()}
