"""FedBuff (Nguyen et al., 2022): asynchronous buffered aggregation on the simulated clock.

`concurrency` clients train at once, each from the model version it was sent. A
client's reply arrives at its dispatch time plus its own round time (profile,
actual work, actual bytes). Every K arrivals the server applies
x <- x - eta_s * (1/K) * sum_i s(tau_i) delta_i with s(tau) = 1/sqrt(1 + tau),
tau_i the number of server updates since client i was sent the model; each
arrival frees a slot that a newly sampled available client fills. One row of
metrics.jsonl per server update.
"""

from __future__ import annotations

import heapq
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.codecs import CODECS
from fedsim.config import Scenario
from fedsim.results import MetricsWriter, summarize
from fedsim.seeding import derive_seed

from .aggregate import ClientMetrics, WeightedSum
from .experiment import payload_bytes, prepare
from .nodes import cohort_size

DISPATCH_STREAM = 21


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


class Buffer:
    """The K most recent arrivals as a staleness-weighted running sum."""

    def __init__(self) -> None:
        self.deltas, self.metrics = WeightedSum(), ClientMetrics()
        self.count, self.staleness, self.bytes_up, self.bytes_down = 0, [], 0, 0

    def add(self, delta: np.ndarray, tau: int, arrival: Arrival) -> None:
        self.deltas.add(delta, staleness_weight(tau))
        self.metrics.add(arrival.reply.content["metrics"])
        self.count += 1
        self.staleness.append(tau)
        self.bytes_up += payload_bytes(arrival.reply)
        self.bytes_down += arrival.bytes_down

    def step(self) -> np.ndarray:
        """(1/K) sum_i s(tau_i) delta_i."""
        return (self.deltas.total / np.float32(self.count)).numpy()


def run_fedbuff(grid: Grid, scenario: Scenario, out_dir: Path | str) -> np.ndarray:
    """Asynchronous FedBuff with the scenario's client half; `rounds` counts server updates."""
    n, cfg, alg = scenario.data.num_clients, scenario.system, scenario.algorithm
    _, profiles, evaluator, strategy = prepare(grid, scenario)
    codec, writer = CODECS.get("fp32"), MetricsWriter(out_dir)
    x = evaluator.initial_params()
    arrays = codec.encode(x)  # re-encoded once per server update, not per dispatch
    version, clock, seq, failures, start = 0, 0.0, 0, 0, time.perf_counter()
    flight: list[Arrival] = []
    busy: set[int] = set()

    def dispatch(now: float) -> None:
        """Send the current model to a sampled available idle client; schedule its arrival.

        A client that raises is replaced by another (up to three tries); one that hangs or
        vanishes holds its slot until timeout_s and delivers nothing.
        """
        nonlocal seq, failures
        for _ in range(3):
            avail = np.flatnonzero(profiles.available(version + 1, now))
            idle = [int(p) for p in avail if p not in busy]
            if not idle:
                return
            seq += 1
            rng = np.random.default_rng(derive_seed(scenario.seed, seq, DISPATCH_STREAM))
            pid = idle[rng.integers(len(idle))]
            strategy.eligible = [pid]  # the strategy builds the message as in a sync round
            (msg,) = strategy.configure_train(seq, arrays, ConfigRecord(), grid)
            (reply,) = grid.send_and_receive([msg])
            if reply.has_error():
                failures += 1
                continue
            busy.add(pid)
            down = payload_bytes(msg)
            if profiles.failure(seq, pid) in ("timeout", "vanish"):
                heapq.heappush(flight, Arrival(now + cfg.timeout_s, seq, pid, version, None, down))
                return
            work = float(reply.content["metrics"]["work"])
            t = now + profiles.round_time(pid, down, work, payload_bytes(reply))
            heapq.heappush(flight, Arrival(t, seq, pid, version, reply, down))
            return

    concurrency = cohort_size(n, alg.fraction, alg.min_clients)
    for _ in range(concurrency):
        dispatch(0.0)
    buffer = Buffer()
    bar = tqdm(total=scenario.rounds, desc=scenario.name, disable=not sys.stderr.isatty())
    while version < scenario.rounds and flight:
        arrival = heapq.heappop(flight)
        clock = arrival.time
        busy.discard(arrival.pid)
        if arrival.reply is None:
            failures += 1
            dispatch(clock)
            continue
        delta = strategy.update_of(arrival.reply)
        buffer.add(delta, version - arrival.version, arrival)
        if buffer.count < cfg.buffer_k:
            dispatch(clock)
            continue
        x = x - np.float32(alg.server_lr) * buffer.step()
        arrays = codec.encode(x)
        version += 1
        agg = buffer.metrics.record()
        writer.append(
            {
                "round": version,
                "train_loss": float(agg["train_loss"]),
                **evaluator(x),
                "bytes_up": buffer.bytes_up,
                "bytes_down": buffer.bytes_down,
                "grad_evals": int(agg["grad_evals"]),
                "sim_time_s": clock,
                "wall_s": time.perf_counter() - start,
                "clients": buffer.count,
                "failures": failures,
                "staleness_mean": float(np.mean(buffer.staleness)),
                "staleness_max": int(max(buffer.staleness)),
            }
        )
        buffer, failures = Buffer(), 0
        dispatch(clock)  # after the update: the freed slot starts from the newest model
        bar.update()
    bar.close()
    summary = summarize(writer.rows, scenario=scenario.name, runtime=scenario.runtime, d=x.size)
    writer.finish(summary, x)
    return x
