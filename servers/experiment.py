"""The round loop: Flower's `Strategy.start`, plus what a study needs recorded.

Each round: the strategy configures messages, the Grid delivers them, the
strategy aggregates; the loop counts the bytes of the actual ArrayRecords sent
and received, advances the simulated clock, evaluates on the server and
appends one row to metrics.jsonl.
"""

from __future__ import annotations

import sys
import time
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
        replies = list(grid.send_and_receive(messages))
        new_arrays, agg = strategy.aggregate_train(rnd, replies)
        arrays = arrays if new_arrays is None else new_arrays
        ok = [r for r in replies if not r.has_error()]
        up = {r.metadata.src_node_id: payload_bytes(r) for r in ok}
        clock += max(
            (
                client_round_time(
                    scenario.system,
                    down[r.metadata.src_node_id],
                    float(r.content["metrics"]["work"]),
                    up[r.metadata.src_node_id],
                )
                for r in ok
            ),
            default=0.0,
        )
        row = {
            "round": rnd,
            "train_loss": None if agg is None else float(agg["train_loss"]),
            **evaluator(codec.decode(arrays)),
            "bytes_up": sum(up.values()),
            "bytes_down": sum(down.values()),
            "grad_evals": 0 if agg is None else int(agg["grad_evals"]),
            "sim_time_s": clock,
            "wall_s": time.perf_counter() - start,
            "clients": len(ok),
            "failures": len(messages) - len(ok),
        }
        writer.append(row)
        rows.append(row)
        bar.update()
        bar.set_postfix(loss=row["train_loss"], acc=row["eval_accuracy"])
    bar.close()
    x = np.array(codec.decode(arrays))
    writer.finish(summarize(rows, scenario=scenario.name, runtime=scenario.runtime, d=x.size), x)
    return x
