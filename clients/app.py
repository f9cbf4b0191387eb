"""The fedsim ClientApp: one adapter that runs every method's client round.

Everything a client needs comes in the message (the vector in its wire format, side arrays,
the round's settings, the scenario's data/model/algorithm spec); its partition comes from
the node's `node_config` (`partition-id`), so it behaves the same in-process, on Flower's
Simulation Engine and on a SuperNode. The method's state lives in `Context.state` as arrays
and numbers: the round's new state is kept pending until the server says it used the reply,
so a client whose update was lost, late or void continues from its last used round. Under
`model.buffers = "local"` (FedBN) it keeps its own float buffers there too, as every round it
trains leaves them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import traceback
from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsim.codecs import Codec, codec, pack, unpack
from fedsim.heterogeneity import InjectedFailure, adversaries_of, corrupt, failure_of
from fedsim.messages import (
    ARRAYS,
    CODEC,
    CONFIG,
    EXTRA,
    LAST_USED,
    METRICS,
    MODEL_CODEC,
    ROUND,
    SERVER_ROUND,
    SPEC,
    UPLINK,
)
from fedsim.method import Received, overlay, state_from_parts, state_row, state_to_parts
from fedsim.plugins import PluginError
from fedsim.privacy.mechanisms import clip, gaussian
from fedsim.privacy.plan import sample_rate, spend
from fedsim.seeding import derive_seed, torch_generator

from .objective import Cohort, RoundSpec, cohort_for, initial_buffers

app = ClientApp()
CODEC_STREAM = 41
# Context.state: the method state of the client's last used round and of its latest round,
# each as arrays and numbers
STATE, STATE_VALUES = "method-state", "method-state-values"
PENDING, PENDING_VALUES = "method-pending", "method-pending-values"
BUFFERS = "local-buffers"  # the client's own float buffers (model.buffers = "local")
SPLIT_HOST = "fedsim.clients.split_host"  # loaded only by split-learning runs


class ClientError(RuntimeError):
    """A client half raised: carries the client's traceback to the server, which stops."""


def partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which data partition this node holds."""
    info = ConfigRecord({k: v for k, v in context.node_config.items() if isinstance(v, int | str)})
    return Message(RecordDict({"node": info}), reply_to=msg)


@app.query("state")
def state(msg: Message, context: Context) -> Message:
    """This node's Context.state, for the server's checkpoint."""
    return Message(RecordDict(dict(context.state.items())), reply_to=msg)


@app.query("restore")
def restore(msg: Message, context: Context) -> Message:
    """Replace this node's Context.state by the one a checkpoint kept."""
    context.state.clear()
    context.state.update(msg.content.items())
    return Message(RecordDict(), reply_to=msg)


@app.query("forward")
def forward(msg: Message, context: Context) -> Message:
    """Split learning: a backbone host's activations h = forward(x, theta)."""
    return importlib.import_module(SPLIT_HOST).answer(msg)


@app.query("backprop")
def backprop(msg: Message, context: Context) -> Message:
    """Split learning: a backbone host's adapter gradient backprop(x, theta, g_h)."""
    return importlib.import_module(SPLIT_HOST).answer(msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the method's client round on this node's partition (a cohort of one) and reply
    with its upload. An injected failure raises as such; anything else raises a ClientError
    that carries the traceback (the server stops the run on it)."""
    pid, rnd = partition_id(context), int(msg.content[CONFIG][SERVER_ROUND])
    try:
        spec = RoundSpec.parse(str(msg.content[CONFIG][SPEC]))
    except PluginError as e:  # the run stops on it, naming the plug-in and this node
        raise ClientError(f"node {context.node_id} (partition {pid}): {e}") from None
    if failure_of(spec.failures, spec.seed, rnd, pid) == "raise":
        raise InjectedFailure(f"partition {pid} raises in round {rnd}")
    try:
        (reply,) = run_cohort([msg], [context], vectorize=False)
    except Exception as e:
        raise ClientError(f"partition {pid}, round {rnd}:\n{traceback.format_exc()}") from e
    return reply


def train_cohorts(
    messages: list[Message], contexts: list[Context], chunk: int
) -> Iterator[Message]:
    """The in-process runtime's vectorized path: the round's train messages grouped by what
    the clients were sent (spec, round, wire format, settings) and run as batched cohorts
    of at most `chunk` clients. Replies come in the order of `messages`, built exactly as
    the ClientApp would (injected failures and client errors as Flower error replies)."""
    replies: dict[int, Message] = {}
    groups: dict[str, list[int]] = {}
    for i, (msg, context) in enumerate(zip(messages, contexts, strict=True)):
        config = msg.content[CONFIG]
        pid, rnd = partition_id(context), int(config[SERVER_ROUND])
        spec = RoundSpec.parse(str(config[SPEC]))
        if failure_of(spec.failures, spec.seed, rnd, pid) == "raise":
            error = InjectedFailure(f"partition {pid} raises in round {rnd}")
            replies[i] = error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, error)
            continue
        groups.setdefault(group_key(msg), []).append(i)
    chunks = sorted(g[k : k + chunk] for g in groups.values() for k in range(0, len(g), chunk))
    nxt = 0
    for n, batch in enumerate(chunks):
        try:
            out = run_cohort([messages[i] for i in batch], [contexts[i] for i in batch], True)
        except Exception:  # find the client: each one alone, as the ClientApp would run it
            out = [one_by_one(messages[i], contexts[i]) for i in batch]
        replies.update(zip(batch, out, strict=True))
        done = chunks[n + 1][0] if n + 1 < len(chunks) else len(messages)
        while nxt < done:  # every message before the next chunk's first is answered
            yield replies.pop(nxt)
            nxt += 1
    while nxt < len(messages):  # only injected failures left (or no chunk at all)
        yield replies.pop(nxt)
        nxt += 1


def one_by_one(msg: Message, context: Context) -> Message:
    """A client's reply from the sequential path, or its error reply with its traceback."""
    pid = partition_id(context)
    try:
        (reply,) = run_cohort([msg], [context], vectorize=False)
    except Exception:
        rnd = int(msg.content[CONFIG][SERVER_ROUND])
        error = ClientError(f"partition {pid}, round {rnd}:\n{traceback.format_exc()}")
        return error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, error)
    return reply


def group_key(msg: Message) -> str:
    """Messages a cohort can share: the same spec, round, wire format, settings and side
    arrays (the vectors themselves may differ)."""
    config = msg.content[CONFIG]
    settings = dict(msg.content[ROUND]) if ROUND in msg.content else {}
    return json.dumps(
        [
            str(config[SPEC]),
            int(config[SERVER_ROUND]),
            str(config[MODEL_CODEC]),
            settings,
            sorted(msg.content.get(EXTRA, {})),
        ],
        sort_keys=True,
    )


def error_reply(msg: Message, code: int, error: Exception) -> Message:
    return Message(Error(code, f"{type(error).__name__}: {error}"), reply_to=msg)


def run_cohort(messages: list[Message], contexts: list[Context], vectorize: bool) -> list[Message]:
    """One method round for the clients of `messages` (same spec, round and settings)."""
    config = messages[0].content[CONFIG]
    spec_text, rnd = str(config[SPEC]), int(config[SERVER_ROUND])
    spec = RoundSpec.parse(spec_text)
    method, p = spec.method, spec.params
    pids = [partition_id(c) for c in contexts]
    f = cohort_for(spec_text, pids, vectorize)
    if spec.model.buffers == "local":
        f.load_buffers([own_buffers(c.state) for c in contexts], initial_buffers(spec_text))
    down = received(messages, f, spec, pids, rnd)
    last = method.client_init(p, down)
    for i, (msg, context) in enumerate(zip(messages, contexts, strict=True)):
        used = int(msg.content[CONFIG][LAST_USED])
        row = committed(context.state, method.client_state, used, f.device)
        if row is not None:
            overlay(last, i, row)
    rngs = [torch_generator(spec.seed, rnd, pid) for pid in pids]
    upload, new = method.client_round(p, down, last, f, rngs)
    vectors = upload.vector.detach().cpu().numpy()  # one copy off the device for the cohort
    extras = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in upload.extra.items()}
    replies = []
    for i, (msg, context, pid) in enumerate(zip(messages, contexts, pids, strict=True)):
        keep_pending(context.state, None if new is None else state_row(new, i), rnd)
        weight = upload.weight
        metrics = MetricRecord(
            {
                "num-examples": f.sizes[i],
                "partition-id": pid,
                "train_loss": float(upload.loss[i]),
                "grad_evals": int(upload.grad_evals[i]),
                "work": int(upload.work[i]),
                "weight": float(weight[i] if isinstance(weight, torch.Tensor) else weight),
            }
        )
        privacy = spec.privacy
        if privacy.mechanism in ("dp_sgd", "local"):  # this client's own budget so far
            steps = int(upload.grad_evals[i]) if privacy.mechanism == "dp_sgd" else 1
            q = sample_rate(privacy, p, f.sizes[i])
            metrics["epsilon"] = spend(context.state, privacy, q, steps)
        arrays = encode(vectors[i], codec(upload.codec), spec, rnd, pid)
        content = {ARRAYS: arrays, METRICS: metrics, UPLINK: ConfigRecord({CODEC: upload.codec})}
        if extras:  # an empty record would still be an object to push and pull
            content[EXTRA] = ArrayRecord({k: pack(e[i]) for k, e in extras.items()})
        replies.append(Message(RecordDict(content), reply_to=msg))
    keep_buffers(contexts, f)  # once every reply is built: a rerun starts from the same
    return replies


def received(messages: list[Message], f: Cohort, spec: RoundSpec, pids, rnd: int) -> Received:
    """The messages as the method reads them: the vectors decoded into a [C, d] tensor on the
    clients' device, side arrays [C, ...] there too, the round's settings."""
    model_codec = codec(str(messages[0].content[CONFIG][MODEL_CODEC]))
    vector = f.load([model_codec.decode(m.content[ARRAYS]) for m in messages])
    extra = {
        k: torch.from_numpy(np.stack([unpack(m.content[EXTRA][k]) for m in messages])).to(f.device)
        for k in messages[0].content.get(EXTRA, {})
    }
    first = messages[0].content
    settings = dict(first[ROUND]) if ROUND in first else {}
    return Received(vector, extra, settings, rnd, list(pids), spec.seed)


def committed(state: RecordDict, cls: type | None, last_used: int, device):
    """The method state of the client's last used round on the client's device (None
    before its first): a pending state is promoted if the server used that round."""
    if cls is None:
        return None
    if PENDING in state:
        if int(state[PENDING_VALUES]["round"]) == last_used:
            state[STATE], state[STATE_VALUES] = state[PENDING], state[PENDING_VALUES]
        del state[PENDING], state[PENDING_VALUES]
    if STATE not in state:
        return None
    names = {field.name for field in dataclasses.fields(cls)}
    values = {k: v for k, v in state[STATE_VALUES].items() if k in names}
    arrays = {k: unpack(a) for k, a in state[STATE].items()}
    return state_from_parts(cls, arrays, values, device)


def own_buffers(state: RecordDict) -> np.ndarray | None:
    """The float buffers the client's last round left it (None before its first)."""
    return unpack(state[BUFFERS][BUFFERS]) if BUFFERS in state else None


def keep_buffers(contexts: list[Context], f: Cohort) -> None:
    """Each client's own float buffers as its round left them, in its Context.state: always,
    as its statistics follow its own data whether or not the server uses its update."""
    if f.buffers is None:
        return
    for context, own in zip(contexts, f.buffers.cpu().numpy(), strict=True):
        context.state[BUFFERS] = ArrayRecord({BUFFERS: pack(own)})


def keep_pending(state: RecordDict, new, rnd: int) -> None:
    """Keep the round's new method state until the server says it used the reply."""
    if new is None:
        return
    arrays, values = state_to_parts(new)
    state[PENDING] = ArrayRecord({k: pack(np.ascontiguousarray(v)) for k, v in arrays.items()})
    state[PENDING_VALUES] = ConfigRecord({**values, "round": rnd})


def encode(vector: np.ndarray, wire: Codec, spec: RoundSpec, rnd: int, pid: int):
    """A client's uploaded vector in its wire format (privatized under the `local`
    mechanism, as an adversary corrupts it)."""
    priv = spec.privacy
    rng = None  # the client's stream for noise and random codecs, made only when needed
    if priv.mechanism == "local" or wire.random:
        rng = np.random.default_rng(derive_seed(spec.seed, rnd, pid, CODEC_STREAM))
    if priv.mechanism == "local":  # clip, then noise, then encode
        c = priv.max_grad_norm
        vector = gaussian(clip(vector, c), priv.noise_multiplier * c, rng)
    adv = spec.adversaries
    if adv.fraction and pid in adversaries_of(adv, spec.data.num_clients, spec.seed):
        vector = corrupt(adv, vector, spec.seed, rnd, pid)
    return wire.encode(vector, rng)
