"""The in-process runtime: a Flower `Grid` that calls the ClientApp object directly.

Each virtual node has its own persistent `Context` (node_config with
`partition-id` and `num-partitions`, and `state`), exactly as a SuperNode would.
Messages are delivered one after another in this process, lazily as replies are consumed: no Ray, no
serialization round trip, deterministic. A ClientApp that raises produces a
Flower error reply, as on the other runtimes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from . import compat

NODE_ID_BASE = 1 << 20  # virtual node ids: NODE_ID_BASE + partition id


class InProcessGrid(Grid):
    """A Grid over `num_nodes` virtual SuperNodes that run `client_app` in this process."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int | None = None) -> None:
        self.client_app = client_app
        run_id = random.getrandbits(63) if run_id is None else run_id
        self._run = Run.create_empty(run_id)
        compat.set_server_identity(run_id)
        self.contexts = {
            NODE_ID_BASE + i: Context(
                run_id=run_id,
                node_id=NODE_ID_BASE + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
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
        return list(self.contexts)

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
        iterates holds one client update at a time, never the whole cohort's."""
        for msg in messages:
            compat.assign_message_id(msg)
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
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=msg)
        compat.assign_message_id(reply)
        return reply
