"""The fedsim ClientApp: one adapter that runs every method's client round.

Everything a client needs comes in the message (the vector in its wire format, side arrays,
the round's settings, the scenario's data/model/algorithm spec); its partition comes from
the node's `node_config` (`partition-id`), so it behaves the same in-process, on Flower's
Simulation Engine and on a SuperNode. The method's state lives in `Context.state` as arrays
and numbers: the round's new state is kept pending until the server says it used the reply,
so a client whose update was lost, late or void continues from its last used round.
"""

from __future__ import annotations

import dataclasses
import importlib
import traceback

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.codecs import codec, pack, unpack
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
from fedsim.method import Received, Upload, state_from_parts, state_to_parts
from fedsim.privacy.mechanisms import clip, gaussian
from fedsim.privacy.plan import sample_rate, spend
from fedsim.seeding import derive_seed, torch_generator

from .objective import LocalObjective, RoundSpec, objective_for

app = ClientApp()
CODEC_STREAM = 41
# Context.state: the method state of the client's last used round and of its latest round,
# each as arrays and numbers
STATE, STATE_VALUES = "method-state", "method-state-values"
PENDING, PENDING_VALUES = "method-pending", "method-pending-values"
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
    """Run the method's client round on this node's partition and reply with its upload.
    An injected failure raises as such; anything else raises a ClientError that carries
    the traceback (the server stops the run on it)."""
    config = msg.content[CONFIG]
    spec_text = str(config[SPEC])
    spec = RoundSpec.parse(spec_text)
    pid, rnd = partition_id(context), int(config[SERVER_ROUND])
    if failure_of(spec.failures, spec.seed, rnd, pid) == "raise":
        raise InjectedFailure(f"partition {pid} raises in round {rnd}")
    try:
        return run_round(msg, context, spec, spec_text, pid, rnd)
    except Exception as e:
        raise ClientError(f"partition {pid}, round {rnd}:\n{traceback.format_exc()}") from e


def run_round(msg: Message, context: Context, spec: RoundSpec, spec_text: str, pid, rnd):
    method, p = spec.method, spec.params
    f = objective_for(spec_text, pid)
    down = received(msg, f, spec, pid, rnd)
    last = committed(context.state, method.client_state, int(msg.content[CONFIG][LAST_USED]), f)
    upload, new = method.client_round(p, down, last, f, torch_generator(spec.seed, rnd, pid))
    keep_pending(context.state, new, rnd)
    metrics = MetricRecord(
        {
            "num-examples": f.n,
            "partition-id": pid,
            "train_loss": upload.loss,
            "grad_evals": upload.grad_evals,
            "work": upload.work,
            "weight": upload.weight,
        }
    )
    privacy = spec.privacy
    if privacy.mechanism in ("dp_sgd", "local"):  # this client's own budget so far
        steps = upload.grad_evals if privacy.mechanism == "dp_sgd" else 1
        metrics["epsilon"] = spend(context.state, privacy, sample_rate(privacy, p, f.n), steps)
    arrays, extra = encode(upload, spec, rnd, pid)
    content = {
        ARRAYS: arrays,
        EXTRA: extra,
        METRICS: metrics,
        UPLINK: ConfigRecord({CODEC: upload.codec}),
    }
    return Message(RecordDict(content), reply_to=msg)


def received(msg: Message, f: LocalObjective, spec: RoundSpec, pid: int, rnd: int) -> Received:
    """The message as the method reads it: the vector decoded into the model's reusable
    buffer on the client's device, side arrays there too, the round's settings."""
    config = msg.content[CONFIG]
    vector = f.load(codec(str(config[MODEL_CODEC])).decode(msg.content[ARRAYS]))
    device = vector.device
    extra = {
        k: torch.tensor(np.array(unpack(a)), device=device) for k, a in msg.content[EXTRA].items()
    }
    settings = dict(msg.content[ROUND]) if ROUND in msg.content else {}
    return Received(vector, extra, settings, rnd, pid, spec.seed)


def committed(state: RecordDict, cls: type | None, last_used: int, f: LocalObjective):
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
    return state_from_parts(cls, arrays, values, f.inputs.device)


def keep_pending(state: RecordDict, new, rnd: int) -> None:
    """Keep the round's new method state until the server says it used the reply."""
    if new is None:
        return
    arrays, values = state_to_parts(new)
    state[PENDING] = ArrayRecord({k: pack(np.ascontiguousarray(v)) for k, v in arrays.items()})
    state[PENDING_VALUES] = ConfigRecord({**values, "round": rnd})


def encode(upload: Upload, spec: RoundSpec, rnd: int, pid: int) -> tuple[ArrayRecord, ArrayRecord]:
    """The reply's arrays: the upload's vector (privatized under the `local` mechanism, as an
    adversary corrupts it) in its wire format, and its side arrays as float32."""
    vector, priv = upload.vector.detach().cpu().numpy(), spec.privacy
    rng = np.random.default_rng(derive_seed(spec.seed, rnd, pid, CODEC_STREAM))
    if priv.mechanism == "local":  # clip, then noise, then encode
        c = priv.max_grad_norm
        vector = gaussian(clip(vector, c), priv.noise_multiplier * c, rng)
    adv = spec.adversaries
    if adv.fraction and pid in adversaries_of(adv, spec.data.num_clients, spec.seed):
        vector = corrupt(adv, vector, spec.seed, rnd, pid)
    payload = codec(upload.codec).encode(vector, rng)
    extra = ArrayRecord(
        {k: pack(v.detach().cpu().numpy().astype(np.float32)) for k, v in upload.extra.items()}
    )
    return payload, extra
