"""A backbone host's half of split learning (P3EFT and its baselines): answer `query.forward`
and `query.backprop` with the frozen model the message names, using the adapter weights the
message carries. The host holds no labels, no optimizer and no state besides the model."""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedsim.algorithms import CLIENT_HALVES
from fedsim.codecs import pack, unpack
from fedsim.privacy.backbone import BackboneSpec
from fedsim.privacy.split import BackboneHost

INPUTS = ("input_ids", "attention_mask")
GRAD = "g"  # the activation gradient (or one shard of it) in a backprop query
ACTIVATIONS = "h"


@functools.lru_cache(maxsize=2)
def host(spec_json: str) -> BackboneHost:
    """The frozen model, loaded once per backbone spec."""
    return BackboneHost(BackboneSpec(**json.loads(spec_json)))


def tensors(rec: ArrayRecord, keys) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(unpack(rec[k]))) for k in keys}


def arrays(values: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: pack(v.detach().numpy()) for k, v in values.items()})


def answer(msg: Message) -> Message:
    """forward(x, theta) -> h, or backprop(x, theta, g) -> g_theta."""
    config, rec = msg.content["config"], msg.content["arrays"]
    model = host(str(config["backbone"]))
    adapter = str(config["adapter"])
    x = tensors(rec, INPUTS)
    theta = tensors(rec, [k for k in rec if k not in INPUTS and k != GRAD])
    if msg.metadata.message_type == "query.forward":
        out = {ACTIVATIONS: model.forward(x, adapter, theta)}
    else:
        out = model.backprop(x, adapter, theta, tensors(rec, [GRAD])[GRAD])
    return Message(RecordDict({"arrays": arrays(out)}), reply_to=msg)


CLIENT_HALVES.register(
    "split_lora", answer, "backbone host: answers query.forward and query.backprop"
)
