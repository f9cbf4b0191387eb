"""The one round driver: synchronous rounds (wait for all, deadline, over-commitment) and
FedBuff's asynchronous buffer, each producing batches of replies that the same code decodes,
aggregates (the scenario's rule around the method's server step), evaluates and records in
one typed row. Checkpoints (synchronous rounds) keep the server's and every client's state.

A reply is either an update, an injected failure (counted), a lost node (counted), or a
client's bug: that stops the run with the client's traceback, unless
`system.tolerate_client_errors` counts it instead, loudly.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedsim.checkpoint import load_checkpoint, records_from_parts, records_to_parts, save_checkpoint
from fedsim.config import Scenario
from fedsim.heterogeneity import INJECTED, Profiles, invitations, on_time, settle
from fedsim.method import Aggregate
from fedsim.privacy.accounting import epsilon as privacy_epsilon
from fedsim.privacy.plan import every_round, metadata, reported
from fedsim.results import MetricsWriter, RunFailed, summarize
from fedsim.seeding import derive_seed

from .adapter import MethodServer, Update
from .aggregate import (
    DP_STREAM,
    Buffered,
    ClientMetrics,
    ClipAndNoise,
    CoordinateWise,
    WeightedSum,
    in_cohort_order,
)
from .evaluate import Evaluator
from .nodes import cohort_size, discover_partitions, poisson_partitions, sample_partitions
from .rows import Row

DISPATCH_STREAM = 21
BUG_CODES = {
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
    ErrorCode.UNKNOWN,
}
log = logging.getLogger("fedsim")


def invert(partitions: Mapping[int, int]) -> Mapping[int, int]:
    """node id -> partition id (a table the grid knows inverts without a dict)."""
    if hasattr(partitions, "inverse"):
        return partitions.inverse()
    return {node: pid for pid, node in partitions.items()}


def payload_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (`ArrayRecord.count_bytes()` summed)."""
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


class ClientCrash(RunFailed):
    """A client half raised something other than an injected failure."""


@dataclass
class Federation:
    """What every loop over a scenario needs: nodes, profiles, evaluator, the method's server."""

    grid: Grid
    scenario: Scenario
    partitions: Mapping[int, int]  # partition id -> node id
    profiles: Profiles
    evaluator: Evaluator
    server: MethodServer
    node_pid: Mapping[int, int]  # node id -> partition id
    errors: int = 0  # client bugs counted since the last row (tolerate_client_errors)
    noisy_rounds: int = 0  # DP-FedAvg releases

    @staticmethod
    def of(grid: Grid, scenario: Scenario) -> Federation:
        n = scenario.data.num_clients
        partitions = discover_partitions(grid, n)
        evaluator = Evaluator(scenario)
        server = MethodServer(scenario, evaluator.initial_params(), partitions)
        return Federation(
            grid,
            scenario,
            partitions,
            Profiles(scenario.system, n, scenario.seed),
            evaluator,
            server,
            invert(partitions),
        )

    def failed(self, msg: Message) -> bool:
        """Whether an error reply is a counted failure (injected, or a lost node); a client's
        bug raises ClientCrash unless the scenario tolerates client errors."""
        reason = msg.error.reason
        if INJECTED in reason or msg.error.code not in BUG_CODES:
            return True
        pid = self.node_pid.get(msg.metadata.src_node_id, "?")
        if not self.scenario.system.tolerate_client_errors:
            raise ClientCrash(
                f"client partition {pid} raised (a bug, not an injected failure):\n{reason}"
            )
        self.errors += 1
        log.warning(
            "counted client error %d (partition %s): %s",
            self.errors,
            pid,
            reason.strip().splitlines()[-1],
        )
        return False

    def rule(self, rnd: int):
        """The aggregation rule: the scenario's robust rule or mean, DP-FedAvg around it."""
        s, a, p = self.scenario, self.scenario.algorithm, self.scenario.privacy
        if p.mechanism == "dp_fedavg":  # over the expected cohort q N, fixed
            rng = np.random.default_rng(derive_seed(s.seed, rnd, DP_STREAM))
            expected = a.fraction * s.data.num_clients
            return ClipAndNoise(
                p.max_grad_norm, p.noise_multiplier, expected, rng, self.server.x.size
            )
        if s.system.policy == "fedbuff":
            return Buffered()
        return WeightedSum() if a.aggregation == "mean" else CoordinateWise(a.aggregation, a.trim)

    def apply(
        self,
        updates: Iterable[tuple[Update, float]],
        rnd: int,
        rounds_of: dict[int, int] | None = None,
    ) -> tuple[bool, ClientMetrics]:
        """Aggregate the (update, weight) pairs and apply the method's server step; non-finite
        updates are rejected and counted."""
        rule, extras, metrics = self.rule(rnd), {}, ClientMetrics()
        used, received = [], []
        for u, weight in updates:
            metrics.add(u.metrics)
            received.append(u.pid)
            if not u.finite:
                metrics.rejected += 1  # NaN or inf: never let it into the model
                continue
            rule.add(u.vector, weight)
            for k, v in u.extra.items():
                extras.setdefault(k, WeightedSum()).add(v, 1.0)
            used.append(u.pid)
        if not used and self.scenario.privacy.mechanism != "dp_fedavg":
            return False, metrics  # (DP-FedAvg releases its noise even for an empty cohort)
        agg = Aggregate(rule.value(), {k: v.value() for k, v in extras.items()}, used, received)
        updated = self.server.step(agg, rnd, rounds_of)
        if updated and self.scenario.privacy.mechanism == "dp_fedavg":
            self.noisy_rounds += 1
            p = self.scenario.privacy
            metrics.epsilon = privacy_epsilon(
                p.accountant,
                p.noise_multiplier,
                self.scenario.algorithm.fraction,
                self.noisy_rounds,
                p.delta,
            )
        return updated, metrics

    def row(self, rnd: int, metrics: ClientMetrics, **fields) -> Row:
        x = self.server.x
        diverged = not np.isfinite(x).all() or not math.isfinite(metrics.train_loss or 0.0)
        errors, self.errors = self.errors, 0
        return Row(
            round=rnd,
            train_loss=metrics.train_loss,
            eval={} if diverged else self.evaluator(x),
            grad_evals=metrics.grad_evals,
            rejected=metrics.rejected,
            client_errors=errors if self.scenario.system.tolerate_client_errors else None,
            diverged=diverged or None,
            **fields,
        )

    # -- client states, for checkpoints (every runtime: they travel as messages); only the
    # clients ever sent a round can hold any
    def client_states(self) -> dict[int, RecordDict]:
        msgs = [
            Message(RecordDict(), dst_node_id=self.partitions[pid], message_type="query.state")
            for pid in sorted(self.server.sent)
        ]
        node_pid = self.node_pid
        return {
            node_pid[r.metadata.src_node_id]: r.content for r in self.grid.send_and_receive(msgs)
        }

    def restore_client_states(self, states: dict[int, RecordDict]) -> None:
        msgs = [
            Message(state, dst_node_id=self.partitions[pid], message_type="query.restore")
            for pid, state in sorted(states.items())
        ]
        for reply in self.grid.send_and_receive(msgs):
            if reply.has_error():
                raise RunFailed(f"restoring a client's state failed: {reply.error.reason}")


@dataclass
class Tally:
    """Times each reply on the simulated clock as it streams past, and admits the ones that
    count under the round policy (overcommit holds replies until it knows the k fastest)."""

    fed: Federation
    server_round: int
    down: dict[int, int]
    times: dict[int, float] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    clients: dict[int, dict] = field(default_factory=dict)  # per-client rows, by node
    failures: int = 0
    vanished: int = 0

    def admit(self, replies: Iterable[Message], cohort: list[int], k: int) -> Iterator[Message]:
        cfg, profiles, node_pid = self.fed.scenario.system, self.fed.profiles, self.fed.node_pid
        held: dict[int, Message] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.failures += self.fed.failed(msg)
                continue
            pid = node_pid[node]
            fate = profiles.failure(self.server_round, pid)
            m = msg.content["metrics"]
            self.clients[node] = {
                "round": self.server_round,
                "partition": pid,
                "grad_evals": int(m["grad_evals"]),
                "work": int(m["work"]),
                "fate": fate or "arrived",
            }
            if fate in ("timeout", "vanish"):  # hung, or the reply was lost: never arrives
                self.times[node] = math.inf
                self.vanished += fate == "vanish"
                continue
            self.bytes_up[node] = payload_bytes(msg)
            self.times[node] = profiles.round_time(
                pid, self.down[node], float(m["work"]), self.bytes_up[node]
            )
            self.clients[node]["time_s"] = self.times[node]
            if cfg.policy == "overcommit":
                held[node] = msg
            elif on_time(cfg, self.times[node]):
                yield msg
        if held:
            yield from (held[n] for n in settle(cfg, self.times, cohort, k).kept)


def synchronous_round(fed: Federation, rnd: int, clock: float) -> tuple[Row, float, list[dict]]:
    """One round: sample, send, admit replies under the policy, aggregate, step, record."""
    s, a, system = fed.scenario, fed.scenario.algorithm, fed.scenario.system
    eligible = fed.profiles.available_partitions(rnd, clock)
    if s.privacy.mechanism == "dp_fedavg":  # the sampling its accountant assumes
        pids = poisson_partitions(eligible, a.fraction, s.seed, rnd)
        k = len(pids)
    else:
        k = cohort_size(len(eligible), a.fraction, a.min_clients)
        pids = sample_partitions(eligible, min(len(eligible), invitations(system, k)), s.seed, rnd)
    messages = fed.server.messages(rnd, pids)
    cohort = [m.metadata.dst_node_id for m in messages]
    down = {m.metadata.dst_node_id: payload_bytes(m) for m in messages}
    tally = Tally(fed, rnd, down)
    replies = tally.admit(fed.grid.send_and_receive(messages), cohort, k)
    decoded = ((u, u.weight) for u in map(fed.server.decode, in_cohort_order(replies, cohort)))
    updated, metrics = fed.apply(decoded, rnd)
    for _ in replies:  # replies the aggregation did not need still count
        pass
    outcome = settle(system, tally.times, cohort, k)
    clock += outcome.duration if messages else system.idle_s
    for node in outcome.late:
        tally.clients[node]["fate"] = "late"
    row = fed.row(
        rnd,
        metrics,
        bytes_up=sum(tally.bytes_up.values()),
        bytes_down=sum(down.values()),
        sim_time_s=clock,
        wall_s=0.0,
        clients=len(outcome.kept),
        updated=updated,
        invited=len(messages),
        available=len(eligible),
        failures=tally.failures,
        timeouts=len(outcome.timed_out) - tally.vanished,
        dropouts=tally.vanished,
        late=len(outcome.late),
    )
    if s.privacy.active:
        row.epsilon = metrics.epsilon
    return row, clock, [tally.clients[n] for n in cohort if n in tally.clients]


def run_rounds(grid: Grid, scenario: Scenario, out_dir: Path | str, resume: bool = False) -> None:
    """Run the scenario's rounds over `grid` (after the last checkpoint when resuming) and
    write the run directory."""
    fed = Federation.of(grid, scenario)
    if scenario.system.policy == "fedbuff":
        finish(fed, out_dir, fedbuff(fed, MetricsWriter(out_dir)))
        return
    ck = load_checkpoint(out_dir, scenario.to_json()) if resume else None
    done, clock, spent, wall = 0, 0.0, 0.0, 0.0
    if ck:
        meta, arrays = ck
        done, clock, spent, wall = meta["round"], meta["clock"], meta["epsilon"], meta["wall_s"]
        fed.noisy_rounds = meta["noisy_rounds"]
        server = {
            k.removeprefix("server/"): v for k, v in arrays.items() if k.startswith("server/")
        }
        fed.server.load_state_parts(server, meta["server"])
        fed.restore_client_states(
            {
                int(pid): records_from_parts(f"client/{pid}", doc, arrays)
                for pid, doc in meta["clients"].items()
            }
        )
    writer = MetricsWriter(out_dir, resume_after=done)
    start = time.perf_counter() - wall
    report = reported(scenario)
    planned = every_round(scenario) if report == "every_round" else None
    for rnd in range(done + 1, scenario.rounds + 1):
        row, clock, clients = synchronous_round(fed, rnd, clock)
        spent = max(spent, row.epsilon or 0.0)  # clients' participations, or the server's
        row.epsilon = spent if scenario.privacy.active else None
        if planned is not None:
            row.epsilon, row.epsilon_participation = planned(rnd), spent
        row.wall_s = time.perf_counter() - start
        writer.append(row.to_dict(), clients)
        if row.diverged:
            break
        if scenario.checkpoint_every and rnd % scenario.checkpoint_every == 0:
            checkpoint(fed, out_dir, rnd, clock, row.wall_s, spent)
    finish(fed, out_dir, writer, spent)


def checkpoint(fed: Federation, out_dir, rnd: int, clock: float, wall: float, spent: float):
    arrays, values = fed.server.state_parts()
    arrays = {f"server/{k}": v for k, v in arrays.items()}
    clients = {}
    for pid, records in fed.client_states().items():
        clients[pid], parts = records_to_parts(f"client/{pid}", records)
        arrays.update(parts)
    meta = {
        "round": rnd,
        "clock": clock,
        "wall_s": wall,
        "epsilon": spent,
        "noisy_rounds": fed.noisy_rounds,
        "server": values,
        "clients": clients,
    }
    save_checkpoint(out_dir, fed.scenario.to_json(), meta, arrays)


def finish(fed: Federation, out_dir, writer: MetricsWriter, spent: float | None = None) -> None:
    """summary.json and the final model; a diverged run says so."""
    s, x = fed.scenario, fed.server.x
    rows = writer.rows
    if spent is None:
        spent = max((r.get("epsilon", 0.0) for r in rows), default=0.0)
    final = rows[-1].get("epsilon", 0.0) if rows else 0.0
    participation = spent if reported(s) else None
    extra = {"privacy": metadata(s, final, participation)}
    if s.model.buffers == "local":  # FedBN's known limitation, said where results are read
        extra["eval_buffers"] = "initial (model.buffers = 'local': each client keeps its own)"
    if rows and rows[-1].get("diverged"):
        extra["diverged_at"] = rows[-1]["round"]
        print(
            f"fedsim: the run diverged at round {rows[-1]['round']} (non-finite model or"
            " client loss); stopped there",
            file=sys.stderr,
        )
    summary = summarize(rows, scenario=s.name, runtime=s.runtime, d=x.size, **extra)
    writer.finish(summary, np.array(x))


# ---------------------------------------------------------------- FedBuff


def staleness_weight(tau: int) -> float:
    """FedBuff's polynomial staleness discount."""
    return 1.0 / math.sqrt(1.0 + tau)


@dataclass(order=True)
class Arrival:
    """A client update in flight, ordered by its simulated arrival time."""

    time: float
    seq: int
    pid: int = field(compare=False)
    version: int = field(compare=False)  # model version the client trained from
    reply: Message | None = field(compare=False)  # None: lost (hung or vanished)
    bytes_down: int = field(compare=False)


def fedbuff(fed: Federation, writer: MetricsWriter) -> MetricsWriter:
    """FedBuff (Nguyen et al., 2022): `concurrency` clients train at once, each from the model
    version it was sent; a reply arrives at its dispatch time plus its own round time. Every
    K arrivals the method's server step gets (1/K) sum_i s(tau_i) delta_i, s(tau) =
    1/sqrt(1 + tau), tau_i the server updates since client i was sent the model. `rounds`
    counts server updates, one row each."""
    s, cfg, a = fed.scenario, fed.scenario.system, fed.scenario.algorithm
    n, start = s.data.num_clients, time.perf_counter()
    version, clock, seq = 0, 0.0, 0
    flight: list[Arrival] = []
    busy: set[int] = set()
    window = {"failures": 0, "invited": 0, "available": 0}

    def dispatch(now: float) -> None:
        """Send the current model to a sampled available idle client; schedule its arrival.
        A client that raises (injected) is replaced by another, up to three tries; one that
        hangs or vanishes holds its slot until timeout_s and delivers nothing."""
        nonlocal seq
        for _ in range(3):
            avail = np.flatnonzero(fed.profiles.available(version + 1, now))
            idle = [int(p) for p in avail if p not in busy]
            window["available"] = len(avail)
            if not idle:
                return
            seq += 1
            rng = np.random.default_rng(derive_seed(s.seed, seq, DISPATCH_STREAM))
            pid = idle[rng.integers(len(idle))]
            (msg,) = fed.server.messages(seq, [pid])
            (reply,) = fed.grid.send_and_receive([msg])
            window["invited"] += 1
            if reply.has_error():
                window["failures"] += fed.failed(reply)
                continue
            busy.add(pid)
            down = payload_bytes(msg)
            if fed.profiles.failure(seq, pid) in ("timeout", "vanish"):
                heapq.heappush(flight, Arrival(now + cfg.timeout_s, seq, pid, version, None, down))
                return
            work = float(reply.content["metrics"]["work"])
            t = now + fed.profiles.round_time(pid, down, work, payload_bytes(reply))
            heapq.heappush(flight, Arrival(t, seq, pid, version, reply, down))
            return

    for _ in range(cohort_size(n, a.fraction, a.min_clients)):
        dispatch(0.0)
    buffer: list[tuple[Arrival, Update]] = []
    spent = 0.0
    while version < s.rounds and flight:
        arrival = heapq.heappop(flight)
        clock = arrival.time
        busy.discard(arrival.pid)
        if arrival.reply is None:
            window["failures"] += 1
            dispatch(clock)
            continue
        update = fed.server.decode(arrival.reply)
        if update.finite:  # it will be used: the client keeps this round's state
            fed.server.last_used[arrival.pid] = arrival.seq
        buffer.append((arrival, update))
        if len(buffer) < cfg.buffer_k:
            dispatch(clock)
            continue
        stale = [version - b.version for b, _ in buffer]
        updates = [(u, staleness_weight(t)) for (_, u), t in zip(buffer, stale, strict=True)]
        rounds_of = {b.pid: b.seq for b, _ in buffer}
        updated, metrics = fed.apply(updates, version + 1, rounds_of=rounds_of)
        version += 1
        row = fed.row(
            version,
            metrics,
            bytes_up=sum(payload_bytes(b.reply) for b, _ in buffer),
            bytes_down=sum(b.bytes_down for b, _ in buffer),
            sim_time_s=clock,
            wall_s=time.perf_counter() - start,
            clients=len(buffer),
            updated=updated,
            staleness_mean=float(np.mean(stale)),
            staleness_max=int(max(stale)),
            **window,
        )
        if s.privacy.active:
            spent = max(spent, metrics.epsilon)
            row.epsilon = spent
        writer.append(row.to_dict())
        buffer, window = [], {"failures": 0, "invited": 0, "available": window["available"]}
        if row.diverged:
            break
        dispatch(clock)  # after the update: the freed slot starts from the newest model
    return writer
