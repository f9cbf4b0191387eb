"""Heterogeneous clients for any Flower App: a Grid wrapper that applies fedsim's `[system]`
profiles to the messages an arbitrary ServerApp sends, as a real federation would answer.

A node that is unavailable this round, or whose injected failure is `vanish`, answers with
the error reply a SuperLink gives for a node that went offline (NODE_UNAVAILABLE); an
injected `raise` is a ClientApp exception (CLIENT_APP_RAISED_EXCEPTION); a `timeout` sends
nothing back. Every reply that arrives takes latency + bytes down / downlink + work / speed
+ bytes up / uplink simulated seconds (work: the `num-examples` its metrics report), and the
round policy (`wait_all`, or `deadline`: later replies are not delivered) settles each
exchange: the clock advances by its duration. A message's round is its config's
`server-round` (Flower's strategies send it), else its numeric `group_id`. The app's
strategy sees the replies it would see on a real federation: its `min_available_nodes`,
failure handling and aggregation are its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.heterogeneity import INJECTED, Profiles, SystemConfig, settle

from . import compat
from .inprocess import NODE_ID_BASE, InProcessGrid

OFFLINE = "node unavailable (fedsim [system]: offline in this round)"


@dataclass(frozen=True)
class Exchange:
    """One send_and_receive of the app on the simulated clock."""

    round: int
    message_type: str
    sent: int
    replies: int  # delivered to the app (errors included)
    unavailable: int  # offline or vanished: NODE_UNAVAILABLE replies
    raised: int  # injected ClientApp exceptions
    timed_out: int  # no reply within system.timeout_s
    late: int  # after system.deadline_s: not delivered
    duration_s: float
    sim_time_s: float  # the clock when the exchange ended


class SystemGrid(Grid):
    """`inner` (an InProcessGrid) seen through the `[system]` profiles of its nodes."""

    def __init__(self, inner: InProcessGrid, cfg: SystemConfig, seed: int) -> None:
        self.inner, self.cfg = inner, cfg
        self.profiles = Profiles(cfg, inner.num_nodes, seed)
        self.now = 0.0
        self.exchanges: list[Exchange] = []
        self._trains = 0  # train exchanges so far
        self._replies: dict[str, Message] = {}

    # -- what the inner grid answers as it is
    @property
    def run(self) -> Run:
        return self.inner.run

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Every node: a node offline this round is found out when it does not answer, as a
        strategy finds out on a real federation after sampling it."""
        return self.inner.get_node_ids()

    # -- messages through the profiles
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for reply in self._exchange(messages):
            self._replies[reply.metadata.reply_to_message_id] = reply
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        yield from self._exchange(list(messages))

    def _exchange(self, messages: list[Message]) -> list[Message]:
        """The replies the app receives for `messages` (each given its id once, here or by
        the inner grid), the clock advanced by the exchange."""
        if not messages:
            return []
        rnd = self._round(messages[0])
        available = self.profiles.available(rnd, self.now)
        replies: dict[int, Message] = {}
        times: dict[int, float] = {}
        counts = {"unavailable": 0, "raised": 0}
        deliver = []
        for i, msg in enumerate(messages):
            pid = msg.metadata.dst_node_id - NODE_ID_BASE
            fate = self.profiles.failure(rnd, pid)
            if not available[pid] or fate == "vanish":
                replies[i] = error(msg, ErrorCode.NODE_UNAVAILABLE, OFFLINE)
                counts["unavailable"] += 1
            elif fate == "raise":
                reason = f"RuntimeError: {INJECTED}: node {pid} raises in round {rnd}"
                replies[i] = error(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
                counts["raised"] += 1
            elif fate == "timeout":
                compat.assign_message_id(msg)
                times[i] = float("inf")
            else:
                deliver.append(i)
        delivered = self.inner.send_and_receive([messages[j] for j in deliver])
        for i, reply in zip(deliver, delivered, strict=True):
            pid = messages[i].metadata.dst_node_id - NODE_ID_BASE
            times[i] = self.profiles.round_time(pid, size(messages[i]), work(reply), size(reply))
            replies[i] = reply
        settled = settle(self.cfg, times, sorted(times), len(times))
        for i in settled.late + settled.timed_out:
            replies.pop(i, None)
        self.now += settled.duration
        self.exchanges.append(
            Exchange(
                rnd,
                messages[0].metadata.message_type,
                len(messages),
                len(replies),
                counts["unavailable"],
                counts["raised"],
                len(settled.timed_out),
                len(settled.late),
                settled.duration,
                self.now,
            )
        )
        return [replies[i] for i in sorted(replies)]

    def _round(self, msg: Message) -> int:
        """The server round a message belongs to: its config's `server-round` (Flower's
        strategies send it), else a numeric group id, else the count of train exchanges."""
        if msg.metadata.message_type == "train":
            self._trains += 1
        if not msg.has_content():
            return max(1, self._trains)
        for record in msg.content.config_records.values():
            if isinstance(record.get("server-round"), int):
                return record["server-round"]
        group = msg.metadata.group_id
        return int(group) if group.isdigit() else max(1, self._trains)

    def clock(self) -> list[dict]:
        return [asdict(e) for e in self.exchanges]


def error(msg: Message, code: int, reason: str) -> Message:
    """The error reply a SuperLink or SuperNode sends for `msg` (which gets its id now)."""
    compat.assign_message_id(msg)
    reply = Message(Error(code, reason), reply_to=msg)
    compat.assign_message_id(reply)
    return reply


def size(msg: Message) -> int:
    """Bytes of the arrays a message carries (what the bandwidths are charged for)."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


def work(reply: Message) -> float:
    """Examples the client says it processed: its metrics' `num-examples` (Flower's key)."""
    if reply.has_error():
        return 0.0
    return float(sum(rec.get("num-examples", 0) for rec in reply.content.metric_records.values()))
