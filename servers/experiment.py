"""The round loop: Flower's `Strategy.start`, plus what a study needs recorded.

Each round: the strategy configures messages, the Grid delivers them, the
strategy aggregates; the loop counts the bytes of the actual ArrayRecords sent
and received, advances the simulated clock, evaluates on the server and
appends one row to metrics.jsonl.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.algorithms import SERVER_HALVES
from fedsim.codecs import CODECS
from fedsim.config import Scenario
from fedsim.heterogeneity import client_round_time
from fedsim.results import MetricsWriter, summarize

from .evaluate import Evaluator
from .nodes import discover_partitions


def payload_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (`ArrayRecord.count_bytes()` summed)."""
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


@dataclass
class Tally:
    """What the loop records of each reply as the strategy consumes the stream."""

    bytes_up: dict[int, int] = field(default_factory=dict)
    work: dict[int, float] = field(default_factory=dict)
    errors: int = 0

    def watch(self, replies: Iterable[Message]) -> Iterator[Message]:
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.errors += 1
            else:
                self.bytes_up[node] = payload_bytes(msg)
                self.work[node] = float(msg.content["metrics"]["work"])
            yield msg


def run_experiment(grid: Grid, scenario: Scenario, out_dir: Path | str) -> np.ndarray:
    """Run every round of `scenario` over `grid`, write the run directory, return the final x."""
    partitions = discover_partitions(grid, scenario.data.num_clients)
    evaluator = Evaluator(scenario)
    strategy = SERVER_HALVES.get(scenario.algorithm.name).strategy(scenario, partitions)
    codec = CODECS.get("fp32")
    writer = MetricsWriter(out_dir)
    arrays = codec.encode(evaluator.initial_params())
    rows, clock, start = [], 0.0, time.perf_counter()
    bar = tqdm(total=scenario.rounds, desc=scenario.name, disable=not sys.stderr.isatty())
    for rnd in range(1, scenario.rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        down = {m.metadata.dst_node_id: payload_bytes(m) for m in messages}
        tally = Tally()
        replies = tally.watch(grid.send_and_receive(messages))
        new_arrays, agg = strategy.aggregate_train(rnd, replies)
        for _ in replies:  # a strategy may stop early; the rest still count
            pass
        arrays = arrays if new_arrays is None else new_arrays
        clock += max(
            (
                client_round_time(scenario.system, down[n], tally.work[n], up)
                for n, up in tally.bytes_up.items()
            ),
            default=0.0,
        )
        row = {
            "round": rnd,
            "train_loss": None if agg is None else float(agg["train_loss"]),
            **evaluator(codec.decode(arrays)),
            "bytes_up": sum(tally.bytes_up.values()),
            "bytes_down": sum(down.values()),
            "grad_evals": 0 if agg is None else int(agg["grad_evals"]),
            "sim_time_s": clock,
            "wall_s": time.perf_counter() - start,
            "clients": len(tally.bytes_up),
            "failures": len(messages) - len(tally.bytes_up),
        }
        writer.append(row)
        rows.append(row)
        bar.update()
        bar.set_postfix(loss=row["train_loss"], acc=row["eval_accuracy"])
    bar.close()
    x = np.array(codec.decode(arrays))
    writer.finish(summarize(rows, scenario=scenario.name, runtime=scenario.runtime, d=x.size), x)
    return x
