"""The server half of the one generic adapter: a method's server state and steps mapped onto
Flower messages. It builds each client's message from the method's broadcast (encoded once
per distinct downlink), decodes replies, and applies the method's server step to what the
aggregation rule made of them. It also remembers, per client, the last round whose update it
used, which the client adapter needs to keep or drop its pending state."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from torch import Tensor

from fedsim.codecs import codec, pack, readonly_tensor, unpack
from fedsim.config import Scenario, client_spec
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
from fedsim.method import Aggregate, Downlink, FederatedMethod, state_from_parts, state_to_parts


@dataclass(frozen=True)
class Update:
    """One decoded reply."""

    pid: int
    vector: Tensor
    extra: dict[str, Tensor]
    weight: float
    metrics: MetricRecord

    @property
    def finite(self) -> bool:
        """No NaN or inf anywhere in what the client sent (a finite sum settles it at the
        cost of one pass; only an overflowing sum needs the element-wise check)."""
        vs = (self.vector, *self.extra.values())
        return all(math.isfinite(v.sum()) or bool(torch.isfinite(v).all()) for v in vs)


class MethodServer:
    """The server's state of one run of a federated method."""

    def __init__(self, scenario: Scenario, x0: np.ndarray, partitions: Mapping[int, int]) -> None:
        self.method: FederatedMethod = scenario.method
        self.p = scenario.algorithm
        self.partitions = partitions  # partition id -> node id
        self.spec = client_spec(scenario)
        self.state = self.method.server_init(
            self.p, torch.from_numpy(np.array(x0, dtype=np.float32)), len(partitions), scenario.seed
        )
        self.last_used: dict[int, int] = {}  # partition -> last round whose update was used
        self.sent: set[int] = set()  # partitions ever sent a round (the ones with state)

    @property
    def x(self) -> np.ndarray:
        return self.state.x.numpy()

    def messages(self, rnd: int, pids: list[int]) -> list[Message]:
        """The round's message to each partition in `pids`."""
        self.state, shared = self.method.broadcast(self.p, self.state, rnd)
        encoded: dict[int, tuple[ArrayRecord, ArrayRecord]] = {}
        out = []
        self.sent.update(pids)
        for pid in pids:
            down = self.method.personalize(self.p, self.state, rnd, pid, shared)
            if id(down) not in encoded:
                encoded[id(down)] = self._encode(down)
            arrays, extra = encoded[id(down)]
            config = ConfigRecord(
                {
                    SERVER_ROUND: rnd,
                    SPEC: self.spec,
                    MODEL_CODEC: down.codec,
                    LAST_USED: self.last_used.get(pid, 0),
                }
            )
            content = RecordDict({ARRAYS: arrays, CONFIG: config})
            if extra:  # an empty record would still be an object to push and pull
                content[EXTRA] = extra
            if down.config:
                content[ROUND] = ConfigRecord(down.config)
            node = self.partitions[pid]
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    @staticmethod
    def _encode(down: Downlink) -> tuple[ArrayRecord, ArrayRecord]:
        arrays = codec(down.codec).encode(down.vector.numpy())
        extra = ArrayRecord({k: pack(v.numpy().astype(np.float32)) for k, v in down.extra.items()})
        return arrays, extra

    @staticmethod
    def decode(reply: Message) -> Update:
        """A reply's update vector, side arrays, weight and metrics."""
        m, uplink = reply.content[METRICS], str(reply.content[UPLINK][CODEC])
        vector = readonly_tensor(codec(uplink).decode(reply.content[ARRAYS]))  # views: no copy
        sides = reply.content.get(EXTRA, {})
        extra = {k: readonly_tensor(unpack(a)) for k, a in sides.items()}
        return Update(int(m["partition-id"]), vector, extra, float(m["weight"]), m)

    def step(self, agg: Aggregate, rnd: int, rounds_of: dict[int, int] | None = None) -> bool:
        """Apply the method's server step; False for a void round (the model stays).
        `rounds_of` gives the round each used update was computed in (default: `rnd`)."""
        new = self.method.server_step(self.p, self.state, agg, rnd)
        if new is None:
            return False
        self.state = new
        for pid in agg.used:
            self.last_used[pid] = rnd if rounds_of is None else rounds_of[pid]
        return True

    def state_parts(self) -> tuple[dict[str, np.ndarray], dict]:
        """The server state as arrays and JSON values, for a checkpoint."""
        arrays, values = state_to_parts(self.state)
        return arrays, {"method": values, "last_used": self.last_used, "sent": sorted(self.sent)}

    def load_state_parts(self, arrays: dict[str, np.ndarray], values: dict) -> None:
        self.state = state_from_parts(type(self.state), arrays, values["method"], "cpu")
        self.last_used = {int(k): int(v) for k, v in values["last_used"].items()}
        self.sent = set(values["sent"])
