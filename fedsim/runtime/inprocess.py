"""The in-process runtime: a Flower `Grid` that calls the ClientApp object directly.

Each virtual node has its own persistent `Context` (node_config with
`partition-id` and `num-partitions`, and `state`), exactly as a SuperNode would.
Messages are delivered one after another in this process, lazily as replies are consumed:
no Ray, no serialization round trip, deterministic. A ClientApp that raises produces a
Flower error reply, as on the other runtimes. With a `cohort` runner, a round's train
messages go to it together instead (the vectorized path): it answers them as the ClientApp
would, many clients at a time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from traceback import format_exc

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from . import compat
from .threads import pool, single_threaded_ops

log = logging.getLogger("fedsim")
NODE_ID_BASE = 1 << 20  # virtual node ids: NODE_ID_BASE + partition id


class Offset(Mapping[int, int]):
    """k -> base + k for k in range(n): a node table that costs nothing per node."""

    def __init__(self, base: int, n: int) -> None:
        self.base, self.n = base, n

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self.n:
            raise KeyError(k)
        return self.base + k

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    def inverse(self) -> Mapping[int, int]:
        """node -> partition id."""
        return Shifted(self.base, self.n)


class Shifted(Offset):
    """node -> node - base for the nodes of an Offset."""

    def __getitem__(self, node: int) -> int:
        if not 0 <= node - self.base < self.n:
            raise KeyError(node)
        return node - self.base

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.base, self.base + self.n))


class Contexts(dict):
    """Each virtual node's persistent Context, made the first time the node is reached: a
    population of millions costs memory only for the clients sampled."""

    def __init__(self, run_id: int, num_nodes: int, run_config: dict) -> None:
        super().__init__()
        self.run_id, self.num_nodes, self.run_config = run_id, num_nodes, run_config

    def __missing__(self, node: int) -> Context:
        pid = node - NODE_ID_BASE
        if not 0 <= pid < self.num_nodes:
            raise KeyError(node)
        context = Context(
            run_id=self.run_id,
            node_id=node,
            node_config={"partition-id": pid, "num-partitions": self.num_nodes},
            state=RecordDict(),
            run_config=dict(self.run_config),
        )
        self[node] = context
        return context

    def get(self, node: int, default=None):
        try:
            return self[node]
        except KeyError:
            return default


class InProcessGrid(Grid):
    """A Grid over `num_nodes` virtual SuperNodes that run `client_app` in this process;
    `cohort(messages, contexts, chunk)`, if given, answers train messages in batches;
    `workers` > 1 runs the messages of one exchange on that many threads (replies still in
    the order of the messages). `run_config` is every node's Context's, as a SuperNode's;
    `report_errors` logs a raising ClientApp's traceback (fedsim's own apps send theirs)."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_id: int | None = None,
        cohort: Callable[..., Iterator[Message]] | None = None,
        chunk: int = 1,
        workers: int = 1,
        run_config: dict | None = None,
        report_errors: bool = False,
    ) -> None:
        self.client_app, self.cohort, self.chunk = client_app, cohort, chunk
        self.workers, self.report_errors = workers, report_errors
        run_id = random.getrandbits(63) if run_id is None else run_id
        self._run = Run.create_empty(run_id)
        compat.set_server_identity(run_id)
        self.num_nodes = num_nodes
        self.contexts = Contexts(run_id, num_nodes, run_config or {})
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run
        compat.set_server_identity(run.run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return range(NODE_ID_BASE, NODE_ID_BASE + self.num_nodes)

    def partitions(self) -> Offset:
        """partition id -> node id, known without asking (node = NODE_ID_BASE + partition)."""
        return Offset(NODE_ID_BASE, self.num_nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = compat.assign_message_id(msg)
            self._replies[msg_id] = self._deliver(msg)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Replies, each produced when it is consumed: a strategy that aggregates as it
        iterates holds one client update (or one cohort chunk) at a time."""
        messages = list(messages)
        for msg in messages:
            compat.assign_message_id(msg)
        if self.cohort and messages and all(m.metadata.message_type == "train" for m in messages):
            contexts = [self.contexts[m.metadata.dst_node_id] for m in messages]
            for reply in self.cohort(messages, contexts, self.chunk):
                compat.assign_message_id(reply)
                yield reply
            return
        if self.workers > 1 and len(messages) > 1:
            with single_threaded_ops():
                yield from pool(self.workers).map(self._deliver, messages)
            return
        for msg in messages:
            yield self._deliver(msg)

    def _deliver(self, msg: Message) -> Message:
        """Run the ClientApp of the destination node on `msg`; errors become error replies."""
        context = self.contexts.get(msg.metadata.dst_node_id)
        if context is None:
            reply = Message(Error(ErrorCode.NODE_UNAVAILABLE, "unknown node"), reply_to=msg)
        else:
            try:
                reply = self.client_app(msg, context)
            except Exception as e:  # a failing client is data for the strategy, not a crash
                reason = f"{type(e).__name__}: {e}"
                if self.report_errors:  # as Flower's engine logs a ClientApp's exception
                    log.error("ClientApp of node %s raised:\n%s", context.node_id, format_exc())
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
        compat.assign_message_id(reply)
        return reply
