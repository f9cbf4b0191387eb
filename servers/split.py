"""Split learning of LoRA adapters, the label party as the ServerApp (docs/algorithms.md section 7).

The label party holds the inputs, the labels, the head, the adapter weights and the
optimizer; backbone hosts (ClientApps) answer `query.forward` and `query.backprop`. One code
path runs P3EFT (n adapter sets with secret activation mixing, private backpropagation with
m shards, adversarial probes) and its baselines: `head_only` (frozen backbone), `vanilla`
(one adapter, plain backprop) and `dc` (vanilla plus a distance-correlation penalty).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import Tensor, nn

from fedsim.config import Scenario
from fedsim.data import load_dataset
from fedsim.methods.split_lora import SplitParams
from fedsim.models import output_dim
from fedsim.privacy import attacks
from fedsim.privacy.backbone import BackboneSpec, adapter_init, encode_text, hidden_size
from fedsim.privacy.split import (
    ACTIVATIONS,
    GRAD,
    Theta,
    arrays,
    distance_correlation,
    label_loss,
    mix,
    mixing_weights,
    private_shards,
    probe_regularizer,
    recombine,
    tensors,
)
from fedsim.results import MetricsWriter, summarize
from fedsim.seeding import derive_seed, torch_generator

from .driver import payload_bytes
from .nodes import discover_partitions
from .rows import Row

SPLIT_STREAM = 53  # the label party's randomness: adapters, head, mixing weights, shards


def host_of(step: int, adapter: int, shard: int, hosts: int, rotate: bool) -> int:
    """Which host serves adapter i's call j at step t: consecutive hosts for the shards (so
    they land on different hosts when there are at least m), shifted by one every step."""
    return ((step if rotate else 0) + adapter + shard) % hosts


class HostViews:
    """What each host has seen since the last checkpoint, kept with the batch labels (which
    only the label party knows) to score the label-leakage attacks from each host's view."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str, int], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(
            list
        )

    def add(self, node: int, kind: str, adapter: int, value: Tensor, labels: np.ndarray) -> None:
        self.seen[(node, kind, adapter)].append((value.detach().numpy(), labels))

    def leak(self) -> dict[str, float]:
        """Each attack's worst value over hosts and adapter sets; then forget the window."""
        worst: dict[str, float] = defaultdict(float)
        for (_, kind, _), parts in self.seen.items():
            v = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
            scores = {"norm": attacks.norm_attack(v), "spectral": attacks.spectral_attack(v)}
            if kind == "grad":
                scores["direction"] = attacks.direction_attack(v, int(np.argmax(y == 1)))
            for name, s in scores.items():
                worst[f"leak_{kind}_{name}"] = max(worst[f"leak_{kind}_{name}"], attacks.leak(s, y))
            if kind == "act":
                worst["kmeans_act"] = max(worst["kmeans_act"], attacks.kmeans_accuracy(v, y))
        self.seen.clear()
        out = dict(worst)
        out["leak"] = max((v for k, v in out.items() if k.startswith("leak_")), default=0.5)
        return out


class Hosts:
    """The backbone hosts as the label party reaches them: Flower nodes answering queries."""

    def __init__(self, grid: Grid, nodes: list[int], spec: BackboneSpec, rotate: bool) -> None:
        self.grid, self.nodes, self.rotate = grid, nodes, rotate
        self.backbone = json.dumps(spec.to_dict(), sort_keys=True)
        self.bytes_down = self.bytes_up = self.calls = 0

    def node(self, step: int, adapter: int, shard: int) -> int:
        return self.nodes[host_of(step, adapter, shard, len(self.nodes), self.rotate)]

    def query(self, kind: str, node: int, x: dict, adapter: int, theta: Theta, g=None) -> Message:
        values = {**x, **theta} | ({} if g is None else {GRAD: g})
        config = ConfigRecord({"backbone": self.backbone, "adapter": f"a{adapter}"})
        content = RecordDict({"arrays": arrays(values), "config": config})
        return Message(content, dst_node_id=node, message_type=f"query.{kind}")

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Send, and return the replies in the order of `messages`."""
        self.bytes_down += sum(map(payload_bytes, messages))
        self.calls += len(messages)
        by_id = {}
        for reply in self.grid.send_and_receive(messages):
            if reply.has_error():
                raise RuntimeError(f"host {reply.metadata.src_node_id}: {reply.error.reason}")
            self.bytes_up += payload_bytes(reply)
            by_id[reply.metadata.reply_to_message_id] = reply
        return [by_id[m.metadata.message_id] for m in messages]

    def forward(self, step: int, x: dict, thetas: list[Theta]) -> tuple[list[Tensor], list[int]]:
        """h_i = forward(x, theta_i) for every adapter set, and the node that computed each."""
        nodes = [self.node(step, i, 0) for i in range(len(thetas))]
        msgs = [self.query("forward", nodes[i], x, i, th) for i, th in enumerate(thetas)]
        replies = self.exchange(msgs)
        return [tensors(r.content["arrays"], [ACTIVATIONS])[ACTIVATIONS] for r in replies], nodes

    def backprop(
        self, step: int, x: dict, thetas: list[Theta], shards: list[list[Tensor]]
    ) -> tuple[list[list[Theta]], list[list[int]]]:
        """backprop(x, theta_i, g_i^j) for every adapter set i and shard j."""
        nodes = [[self.node(step, i, j) for j in range(len(s))] for i, s in enumerate(shards)]
        msgs = [
            self.query("backprop", nodes[i][j], x, i, thetas[i], g)
            for i, s in enumerate(shards)
            for j, g in enumerate(s)
        ]
        replies = iter(self.exchange(msgs))
        grads = [
            [tensors(next(replies).content["arrays"], thetas[i]) for _ in s]
            for i, s in enumerate(shards)
        ]
        return grads, nodes


class LabelParty:
    """The head psi, n adapter sets theta_i, secret mixing weights W, probes, and Adam."""

    def __init__(self, p: SplitParams, spec: BackboneSpec, classes: int, seed: int) -> None:
        self.p, self.classes = p, classes
        self.gen = torch_generator(seed, SPLIT_STREAM)
        d, out = hidden_size(spec), output_dim(classes)
        self.thetas = [
            {k: v.requires_grad_(p.method != "head_only") for k, v in th.items()}
            for th in adapter_init(spec, self.gen)
        ]
        self.w = mixing_weights(p.adapters, d, self.gen, p.mix_scale)
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(seed, SPLIT_STREAM))
            self.head = nn.Sequential(
                nn.LayerNorm(d, elementwise_affine=False),
                nn.Linear(d, d),
                nn.Tanh(),
                nn.Linear(d, out),
            )
            self.probes = [nn.Linear(d, out) for _ in range(p.adapters)]
        trainable = list(self.head.parameters())
        if p.method != "head_only":
            trainable += [v for th in self.thetas for v in th.values()]
        self.opt = torch.optim.Adam(trainable, lr=p.lr)

    def features(self, hs: list[Tensor]) -> Tensor:
        """h' = sum_i W_i * h_i (one adapter set: h itself)."""
        return mix(self.w, hs) if len(hs) > 1 else hs[0]

    @staticmethod
    def predict(logits: Tensor) -> Tensor:
        return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)

    def step(self, hosts: Hosts, t: int, x: dict, y: Tensor, views: HostViews) -> float:
        """One training step: forward calls, loss and penalties here, private backprop calls,
        recombination, Adam. Returns the main loss."""
        labels = y.numpy()
        hs, fwd_nodes = hosts.forward(t, x, self.thetas)
        for i, (h, node) in enumerate(zip(hs, fwd_nodes, strict=True)):
            views.add(node, "act", i, h, labels)
        hs = [h.requires_grad_() for h in hs]
        self.opt.zero_grad()
        main = label_loss(self.head(self.features(hs)), y)
        (main + self.p.reg * self._penalty(hs, y) if self.p.reg else main).backward()
        if self.p.method != "head_only":
            split = [self._shards(h.grad) for h in hs]
            grads, bwd_nodes = hosts.backprop(t, x, self.thetas, [s for s, _ in split])
            for i, ((shards, weights), g, nodes) in enumerate(
                zip(split, grads, bwd_nodes, strict=True)
            ):
                for shard, node in zip(shards, nodes, strict=True):
                    views.add(node, "grad", i, shard, labels)
                for k, v in recombine(g, weights).items():
                    self.thetas[i][k].grad = v
        self.opt.step()
        return float(main.detach())

    def _penalty(self, hs: list[Tensor], y: Tensor) -> Tensor | float:
        """P3EFT's adversarial probe term or DC's distance correlation; none for the others."""
        if self.p.method == "p3eft":
            return probe_regularizer(hs, y, self.probes, self.p.probe_steps)
        if self.p.method == "dc":
            return distance_correlation(hs[0], y, self.classes)
        return 0.0

    def _shards(self, g: Tensor) -> tuple[list[Tensor], Tensor]:
        if self.p.shards == 1:
            return [g], torch.ones(1)
        return private_shards(g, self.p.shards, self.gen, self.p.noise_scale)

    def evaluate(self, hosts: Hosts, x: dict, y: Tensor, chunk: int = 512) -> dict[str, float]:
        """Test loss and accuracy (the hosts see these inputs too, but no labels or gradients)."""
        loss = correct = 0.0
        with torch.no_grad():
            for s in range(0, len(y), chunk):
                xb = {k: v[s : s + chunk] for k, v in x.items()}
                hs, _ = hosts.forward(0, xb, self.thetas)
                yb = y[s : s + chunk]
                logits = self.head(self.features(hs))
                loss += float(label_loss(logits, yb)) * len(yb)
                correct += float((self.predict(logits) == yb).sum())
        return {"eval_loss": loss / len(y), "eval_accuracy": correct / len(y)}

    def flat(self) -> np.ndarray:
        """Head and adapter weights as one vector (the run's final model)."""
        parts = [p.detach().flatten() for p in self.head.parameters()]
        parts += [v.detach().flatten() for th in self.thetas for v in th.values()]
        return torch.cat(parts).numpy()


def run_split(grid: Grid, scenario: Scenario, out_dir: Path | str, resume: bool = False) -> None:
    """Train for `rounds` steps; every `leak_every` steps write accuracy and each attack's
    worst leak over the hosts' views of the window; the summary's leak is the worst of all."""
    p: SplitParams = scenario.algorithm
    ds = load_dataset(scenario.data, scenario.seed)
    vocab = ds.meta["vocab"]
    spec = BackboneSpec(p.backbone, len(vocab), scenario.seed, p.adapters, p.rank, p.lora_alpha)
    x_train, x_test = encode_text(spec, vocab, ds.x_train, ds.x_test)
    y_train, y_test = torch.from_numpy(ds.y_train), torch.from_numpy(ds.y_test)
    partitions = discover_partitions(grid, p.hosts)
    hosts = Hosts(grid, [partitions[k] for k in range(p.hosts)], spec, p.rotate)
    party = LabelParty(p, spec, ds.num_classes, scenario.seed)
    writer, views = MetricsWriter(out_dir), HostViews()
    batches = batch_order(len(y_train), p.batch_size, scenario.seed)
    start, losses = time.perf_counter(), []
    for t in range(1, scenario.rounds + 1):
        idx = next(batches)
        xb = {k: v[idx] for k, v in x_train.items()}
        losses.append(party.step(hosts, t, xb, y_train[idx], views))
        if t % p.leak_every and t != scenario.rounds:
            continue
        row = Row(
            round=t,
            train_loss=float(np.mean(losses)),
            eval=party.evaluate(hosts, x_test, y_test),
            extra=views.leak(),
            bytes_up=hosts.bytes_up,
            bytes_down=hosts.bytes_down,
            grad_evals=hosts.calls,
            sim_time_s=0.0,  # no simulated clock in split learning
            wall_s=time.perf_counter() - start,
            clients=p.hosts,
        )
        hosts.bytes_up = hosts.bytes_down = hosts.calls = 0
        losses.clear()
        writer.append(row.to_dict())
    worst = {
        k: max(r.get(k, 0.0) for r in writer.rows)
        for k in writer.rows[-1]
        if k.startswith(("leak", "kmeans"))
    }
    summary = summarize(
        writer.rows, scenario=scenario.name, runtime=scenario.runtime, method=p.method, **worst
    )
    writer.finish(summary, party.flat())


def batch_order(n: int, batch_size: int, seed: int):
    """Minibatch indices: a fresh permutation every epoch, seeded."""
    rng = np.random.default_rng(derive_seed(seed, SPLIT_STREAM))
    while True:
        perm = rng.permutation(n)
        for s in range(0, n - batch_size + 1, batch_size):
            yield torch.from_numpy(perm[s : s + batch_size])
