"""A backbone host's half of split learning (P3EFT and its baselines): answer `query.forward`
and `query.backprop` with the frozen model the message names, using the adapter weights the
message carries. The host holds no labels, no optimizer and no state besides the model."""

from __future__ import annotations

import functools
import json

from flwr.app import Message, RecordDict

from fedsim.privacy.backbone import BackboneSpec
from fedsim.privacy.split import ACTIVATIONS, GRAD, INPUTS, BackboneHost, arrays, tensors


@functools.lru_cache(maxsize=2)
def host(spec_json: str, device: str) -> BackboneHost:
    """The frozen model on `device`, loaded once per backbone spec."""
    return BackboneHost(BackboneSpec(**json.loads(spec_json)), device)


def answer(msg: Message) -> Message:
    """forward(x, theta) -> h, or backprop(x, theta, g) -> g_theta, on the query's device."""
    config, rec = msg.content["config"], msg.content["arrays"]
    model = host(str(config["backbone"]), str(config["device"]))
    adapter = str(config["adapter"])
    x = tensors(rec, INPUTS)
    theta = tensors(rec, [k for k in rec if k not in INPUTS and k != GRAD])
    if msg.metadata.message_type == "query.forward":
        out = {ACTIVATIONS: model.forward(x, adapter, theta)}
    else:
        out = model.backprop(x, adapter, theta, tensors(rec, [GRAD])[GRAD])
    return Message(RecordDict({"arrays": arrays(out)}), reply_to=msg)
