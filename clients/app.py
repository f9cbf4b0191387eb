"""The fedsim ClientApp: one Flower ClientApp that runs every registered client half.

Everything a client needs comes in the message (model, round, seed, the
scenario's data/model/algorithm spec); its partition comes from the node's
`node_config` (`partition-id`), so it behaves the same in-process, on Flower's
Simulation Engine and on a SuperNode.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.algorithms import CLIENT_HALVES, MODEL_CODEC
from fedsim.codecs import codec, pack
from fedsim.heterogeneity import adversaries_of, corrupt, failure_of
from fedsim.privacy.mechanisms import clip, gaussian
from fedsim.privacy.plan import sample_rate, spend
from fedsim.seeding import derive_seed, torch_generator

from .split_host import answer
from .training import ClientJob, ClientUpdate, RoundSpec, objective_for

app = ClientApp()
CODEC_STREAM = 41


def partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which data partition this node holds."""
    info = ConfigRecord({k: v for k, v in context.node_config.items() if isinstance(v, int | str)})
    return Message(RecordDict({"node": info}), reply_to=msg)


@app.query("forward")
def forward(msg: Message, context: Context) -> Message:
    """Split learning: a backbone host's activations h = forward(x, theta)."""
    return answer(msg)


@app.query("backprop")
def backprop(msg: Message, context: Context) -> Message:
    """Split learning: a backbone host's adapter gradient backprop(x, theta, g_h)."""
    return answer(msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run the round's client half on this node's partition and reply with its payload."""
    config = msg.content["config"]
    spec_text = str(config["spec"])
    spec = RoundSpec.parse(spec_text)
    pid, rnd = partition_id(context), int(config["server-round"])
    if failure_of(spec.failures, spec.seed, rnd, pid) == "raise":
        raise RuntimeError(f"injected failure: partition {pid} raises in round {rnd}")
    objective = objective_for(spec_text, pid)
    model_codec = str(config.get(MODEL_CODEC, "fp32"))
    received = codec(model_codec).decode(msg.content["arrays"]) if model_codec else None
    job = ClientJob(
        round=rnd,
        partition_id=pid,
        spec=spec,
        objective=objective,
        inbox=msg.content["arrays"],
        received=received,
        x=None if received is None else objective.load(received),
        rng=torch_generator(spec.seed, rnd, pid),
        state=context.state,
        config=config,
    )
    update = CLIENT_HALVES.get(spec.params.name)(job)
    payload = encode(update, spec, rnd, pid)
    privacy = spec.privacy
    metrics = MetricRecord(
        {
            "num-examples": objective.n,
            "partition-id": pid,
            "train_loss": update.train_loss,
            "grad_evals": update.grad_evals,
            "work": update.work,
        }
    )
    if privacy.mechanism in ("dp_sgd", "local"):  # this client's own budget so far
        steps = update.grad_evals if privacy.mechanism == "dp_sgd" else 1
        q = sample_rate(privacy, spec.params, objective.n)
        metrics["epsilon"] = spend(context.state, privacy, q, steps)
    return Message(RecordDict({"arrays": payload, "metrics": metrics}), reply_to=msg)


def encode(update: ClientUpdate, spec: RoundSpec, rnd: int, pid: int) -> ArrayRecord:
    """The reply's arrays: the update's vector (privatized under the `local` mechanism, as an
    adversary corrupts it) in its wire format, plus its side arrays."""
    vector, priv = update.vector, spec.privacy
    rng = np.random.default_rng(derive_seed(spec.seed, rnd, pid, CODEC_STREAM))
    if priv.mechanism == "local":  # clip, then noise, then encode
        c = priv.max_grad_norm
        vector = gaussian(clip(vector, c), priv.noise_multiplier * c, rng)
    adv = spec.adversaries
    if adv.fraction and pid in adversaries_of(adv, spec.data.num_clients, spec.seed):
        vector = corrupt(adv, vector, spec.seed, rnd, pid)
    payload = codec(update.codec).encode(vector, rng)
    for key, side in update.extra.items():
        payload[key] = pack(np.asarray(side, dtype=np.float32))
    return payload
