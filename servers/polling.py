"""Replies as soon as they arrive: Flower's deployment Grid (HttpGrid) sleeps 3 s between its
polls for replies, so every round of a deployment waited up to 3 s after its last client."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S, MAX_POLL_S, GROWTH = 0.005, 0.1, 1.5


class PollingGrid(Grid):
    """`grid` with `send_and_receive` polling from 5 ms, growing by half up to 100 ms, and short
    again after each reply (a pull costs the SuperLink a request: a fixed short interval
    would take CPU from the clients); everything else is the wrapped grid's."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's semantics (every reply, or those in before `timeout`), shorter waits."""
        pending = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        wait = FIRST_POLL_S
        while pending and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(wait if end is None else max(0.0, min(wait, end - time.monotonic())))
                wait = FIRST_POLL_S if got else min(GROWTH * wait, MAX_POLL_S)
        return replies
