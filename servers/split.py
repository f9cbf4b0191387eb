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
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import Tensor, nn

from fedsim.config import Scenario
from fedsim.data import load_dataset
from fedsim.methods.split_lora import SplitParams
from fedsim.nets import output_dim
from fedsim.privacy.backbone import (
    BackboneSpec,
    adapter_init,
    encode_text,
    hidden_size,
    trimmed,
    words,
)
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
    randomized_response,
    recombine,
    tensors,
)
from fedsim.results import MetricsWriter, summarize
from fedsim.seeding import derive_seed, torch_generator

from .driver import payload_bytes
from .host_views import ATTACK_KEYS, Call, HostViews, snapshot
from .nodes import discover_partitions
from .rows import Row

SPLIT_STREAM = 53  # the label party's randomness: adapters, head, mixing weights, shards
RR_STREAM = 59  # label DP's randomized response


def host_of(
    step: int, adapter: int, shard: int, hosts: int, adapters: int, shards: int, rotate: bool
) -> int:
    """Which host serves shard j of adapter set i's call at step t. One host: the two-party
    setting, it serves everything. Several: adapter set i has its own hosts (those
    congruent to i mod n), and a call's m shards go to m different ones of them (the
    load-time check gives every set at least m). With rotation the group's hosts take the
    shards in turn, m per step, so with 2m hosts or more per set no host serves two
    consecutive steps (it never sees one update's before and after)."""
    if hosts == 1:
        return 0
    group = range(adapter, hosts, adapters)
    return group[((step * shards if rotate else 0) + shard) % len(group)]


class Hosts:
    """The backbone hosts as the label party reaches them: Flower nodes answering queries,
    each running the backbone on `device` (the scenario's)."""

    def __init__(
        self,
        grid: Grid,
        nodes: list[int],
        spec: BackboneSpec,
        shards: int,
        rotate: bool,
        device: str = "cpu",
    ) -> None:
        self.grid, self.nodes, self.rotate, self.adapters = grid, nodes, rotate, spec.adapters
        self.shards, self.device = shards, device
        self.backbone = json.dumps(spec.to_dict(), sort_keys=True)
        self.bytes_down = self.bytes_up = self.calls = 0

    def node(self, step: int, adapter: int, shard: int) -> int:
        hosts = len(self.nodes)
        where = host_of(step, adapter, shard, hosts, self.adapters, self.shards, self.rotate)
        return self.nodes[where]

    def query(self, kind: str, node: int, x: dict, adapter: int, theta: Theta, g=None) -> Message:
        values = {**x, **theta} | ({} if g is None else {GRAD: g})
        config = {"backbone": self.backbone, "adapter": f"a{adapter}", "device": self.device}
        config = ConfigRecord(config)
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

    def step(
        self,
        hosts: Hosts,
        t: int,
        x: dict,
        y: Tensor,
        views: HostViews,
        truth: Tensor | None = None,
    ) -> float:
        """One training step on labels y: forward calls, loss and penalties here, private
        backprop calls, recombination, Adam. The hosts' views are scored against the true
        labels (y itself unless label DP randomized it). Returns the main loss."""
        labels = (y if truth is None else truth).numpy()
        sent = [snapshot(theta) for theta in self.thetas]
        hs, fwd_nodes = hosts.forward(t, x, self.thetas)
        for i, (h, node) in enumerate(zip(hs, fwd_nodes, strict=True)):
            views.add(node, Call(t, "act", i, x, sent[i], h.numpy(), labels))
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
                    views.add(node, Call(t, "grad", i, x, sent[i], shard.numpy(), labels))
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

    def evaluate(
        self, hosts: Hosts, x: dict, y: Tensor, views: HostViews, t: int, chunk: int = 512
    ) -> dict[str, float]:
        """Test loss and accuracy at step t (the hosts see these inputs and the current
        weights too, recorded in their views, but no labels or gradients)."""
        loss = correct = 0.0
        sent = [snapshot(theta) for theta in self.thetas]
        with torch.no_grad():
            for s in range(0, len(y), chunk):
                xb = trimmed({k: v[s : s + chunk] for k, v in x.items()})
                hs, nodes = hosts.forward(0, xb, self.thetas)
                yb = y[s : s + chunk]
                for i, (h, node) in enumerate(zip(hs, nodes, strict=True)):
                    views.add(node, Call(t, "eval", i, xb, sent[i], h.numpy(), yb.numpy()))
                logits = self.head(self.features(hs))
                loss += float(label_loss(logits, yb)) * len(yb)
                correct += float((self.predict(logits) == yb).sum())
        return {"eval_loss": loss / len(y), "eval_accuracy": correct / len(y)}

    def weights(self) -> list[Tensor]:
        """The head's weights, then each adapter set's: the order of the run's final model."""
        return list(self.head.parameters()) + [v for th in self.thetas for v in th.values()]

    def flat(self) -> np.ndarray:
        """Head and adapter weights as one vector (the run's final model)."""
        return torch.cat([w.detach().flatten() for w in self.weights()]).numpy()

    def load(self, flat: np.ndarray) -> None:
        """Take the weights of a final model that `flat` wrote."""
        weights = self.weights()
        if len(flat) != sum(w.numel() for w in weights):
            raise ValueError("the final model does not match this scenario's head and adapters")
        with torch.no_grad():
            at = 0
            for w in weights:
                w.copy_(torch.from_numpy(flat[at : at + w.numel()]).view_as(w))
                at += w.numel()


def run_split(grid: Grid, scenario: Scenario, out_dir: Path | str, resume: bool = False) -> None:
    """Train for `rounds` steps; every `leak_every` steps write accuracy and each attack's
    worst leak over the hosts' views of the window; the summary's leak is the worst of all."""
    p: SplitParams = scenario.algorithm
    ds = load_dataset(scenario.data, scenario.seed)
    vocab = ds.meta["vocab"]
    spec = backbone_spec(p, vocab, scenario.seed)
    x_train, x_test = encode_text(spec, vocab, ds.x_train, ds.x_test)
    y_train, y_test = torch.from_numpy(ds.y_train), torch.from_numpy(ds.y_test)
    trained = y_train  # what the label party trains on: the labels, or them randomized
    if p.label_epsilon is not None:
        trained = torch.from_numpy(
            randomized_response(
                ds.y_train, ds.num_classes, p.label_epsilon, derive_seed(scenario.seed, RR_STREAM)
            )
        )
    partitions = discover_partitions(grid, p.hosts)
    nodes = [partitions[k] for k in range(p.hosts)]
    hosts = Hosts(grid, nodes, spec, p.shards, p.rotate, scenario.device)
    party = LabelParty(p, spec, ds.num_classes, scenario.seed)
    writer, views = MetricsWriter(out_dir), HostViews(spec)
    batches = batch_order(len(y_train), p.batch_size, scenario.seed)
    start, losses = time.perf_counter(), []
    for t in range(1, scenario.rounds + 1):
        idx = next(batches)
        xb = trimmed({k: v[idx] for k, v in x_train.items()})
        losses.append(party.step(hosts, t, xb, trained[idx], views, y_train[idx]))
        if t % p.leak_every and t != scenario.rounds:
            continue
        evaluation = party.evaluate(hosts, x_test, y_test, views, t)  # before the views' scoring
        row = Row(
            round=t,
            train_loss=float(np.mean(losses)),
            eval=evaluation,
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
    attacks = sorted({k for r in writer.rows for k in r if k.startswith(ATTACK_KEYS)})
    worst = {k: max(r.get(k, 0.0) for r in writer.rows) for k in attacks}
    if p.label_epsilon is not None:  # the mechanism that ran, and how many labels it moved
        worst |= {
            "label_epsilon": p.label_epsilon,
            "labels_flipped": float((trained != y_train).float().mean()),
        }
    summary = summarize(
        writer.rows, scenario=scenario.name, runtime=scenario.runtime, method=p.method, **worst
    )
    writer.finish(summary, party.flat())


def backbone_spec(p: SplitParams, vocab: list[str], seed: int) -> BackboneSpec:
    """The backbone a split run's hosts load, with its adapter slots."""
    return BackboneSpec(p.backbone, len(words(vocab)), seed, p.adapters, p.rank, p.lora_alpha)


def batch_order(n: int, batch_size: int, seed: int):
    """Minibatch indices: a fresh permutation every epoch, seeded."""
    rng = np.random.default_rng(derive_seed(seed, SPLIT_STREAM))
    while True:
        perm = rng.permutation(n)
        for s in range(0, n - batch_size + 1, batch_size):
            yield torch.from_numpy(perm[s : s + batch_size])
