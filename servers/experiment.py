"""The round loop: Flower's `Strategy.start`, plus what a study needs recorded.

Each round: the strategy configures messages, the Grid delivers them, the
strategy aggregates; the loop counts the bytes of the actual ArrayRecords sent
and received, advances the simulated clock, evaluates on the server and
appends one row to metrics.jsonl.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.algorithms import SERVER_HALVES
from fedsim.codecs import CODECS
from fedsim.config import Scenario
from fedsim.heterogeneity import Profiles, on_time, settle
from fedsim.privacy.plan import metadata
from fedsim.results import MetricsWriter, load_checkpoint, save_checkpoint, summarize

from .evaluate import Evaluator
from .nodes import discover_partitions


def payload_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (`ArrayRecord.count_bytes()` summed)."""
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


@dataclass
class Tally:
    """Times each reply on the simulated clock as it streams past, and admits the ones that
    count under the round policy (overcommit holds replies until it knows the k fastest)."""

    profiles: Profiles
    node_pid: dict[int, int]
    server_round: int
    down: dict[int, int]
    times: dict[int, float] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    clients: dict[int, dict] = field(default_factory=dict)  # per-client rows, by node
    errors: int = 0
    vanished: int = 0

    def admit(self, replies: Iterable[Message], cohort: list[int], k: int) -> Iterator[Message]:
        cfg = self.profiles.cfg
        held: dict[int, Message] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.errors += 1
                continue
            pid = self.node_pid[node]
            fate = self.profiles.failure(self.server_round, pid)
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
            self.times[node] = self.profiles.round_time(
                pid, self.down[node], float(m["work"]), self.bytes_up[node]
            )
            self.clients[node]["time_s"] = self.times[node]
            if cfg.policy == "overcommit":
                held[node] = msg
            elif on_time(cfg, self.times[node]):
                yield msg
        if held:
            yield from (held[n] for n in settle(cfg, self.times, cohort, k).kept)


def client_states(grid: Grid, partitions: dict[int, int]) -> dict[int, RecordDict] | None:
    """Each partition's Context.state, where the runtime exposes them (in-process)."""
    contexts = getattr(grid, "contexts", None)
    if contexts is None:
        return None
    return {pid: contexts[node].state for pid, node in partitions.items()}


def prepare(grid: Grid, scenario: Scenario) -> tuple[dict[int, int], Profiles, Evaluator, Any]:
    """What every round loop needs: partition -> node, client profiles, evaluator, strategy."""
    n = scenario.data.num_clients
    partitions = discover_partitions(grid, n)
    strategy = SERVER_HALVES.get(scenario.algorithm.name).strategy(scenario, partitions)
    return partitions, Profiles(scenario.system, n, scenario.seed), Evaluator(scenario), strategy


def run_experiment(
    grid: Grid, scenario: Scenario, out_dir: Path | str, resume: bool = False
) -> np.ndarray:
    """Run the rounds of `scenario` over `grid` (after the last checkpoint when resuming),
    write the run directory, and return the final x."""
    partitions, profiles, evaluator, strategy = prepare(grid, scenario)
    node_pid = {node: pid for pid, node in partitions.items()}
    codec = CODECS.get("fp32")
    ck = load_checkpoint(out_dir) if resume else None
    done = ck["round"] if ck else 0
    writer = MetricsWriter(out_dir, resume_after=done)
    arrays = codec.encode(ck["x"] if ck else evaluator.initial_params())
    clock, start = (
        (ck["clock"], time.perf_counter() - ck["wall_s"]) if ck else (0.0, time.perf_counter())
    )
    if ck:
        strategy.load_state_dict(ck["strategy"])
        for pid, state in (client_states(grid, partitions) or {}).items():
            state.clear()
            state.update(ck["clients"][pid])
    spent = ck.get("epsilon", 0.0) if ck else 0.0  # the worst epsilon so far
    bar = tqdm(
        total=scenario.rounds, initial=done, desc=scenario.name, disable=not sys.stderr.isatty()
    )
    for rnd in range(done + 1, scenario.rounds + 1):
        strategy.eligible = np.flatnonzero(profiles.available(rnd, clock)).tolist()
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        cohort = [m.metadata.dst_node_id for m in messages]
        down = {m.metadata.dst_node_id: payload_bytes(m) for m in messages}
        tally = Tally(profiles, node_pid, rnd, down)
        replies = tally.admit(grid.send_and_receive(messages), cohort, strategy.target)
        new_arrays, agg = strategy.aggregate_train(rnd, replies)
        for _ in replies:  # a strategy may stop early; the rest still count
            pass
        updated = new_arrays is not None
        spent = max(spent, 0.0 if agg is None else float(agg["epsilon"]))
        arrays = new_arrays if updated else arrays
        outcome = settle(scenario.system, tally.times, cohort, strategy.target)
        clock += outcome.duration if messages else scenario.system.idle_s
        row = {
            "round": rnd,
            "train_loss": None if agg is None else float(agg["train_loss"]),
            **evaluator(codec.decode(arrays)),
            "bytes_up": sum(tally.bytes_up.values()),
            "bytes_down": sum(down.values()),
            "grad_evals": 0 if agg is None else int(agg["grad_evals"]),
            "rejected": 0 if agg is None else int(agg["rejected"]),
            **({"epsilon": spent} if scenario.privacy.active else {}),
            "updated": updated,
            "sim_time_s": clock,
            "wall_s": time.perf_counter() - start,
            "clients": len(outcome.kept),
            "invited": len(messages),
            "available": len(strategy.eligible),
            "failures": tally.errors,
            "timeouts": len(outcome.timed_out) - tally.vanished,
            "dropouts": tally.vanished,
            "late": len(outcome.late),
        }
        for node in outcome.late:
            tally.clients[node]["fate"] = "late"
        writer.append(row, [tally.clients[n] for n in cohort if n in tally.clients])
        if scenario.checkpoint_every and rnd % scenario.checkpoint_every == 0:
            state = {"round": rnd, "clock": clock, "wall_s": row["wall_s"], "epsilon": spent}
            save_checkpoint(
                out_dir,
                state
                | {
                    "x": codec.decode(arrays),
                    "strategy": strategy.state_dict(),
                    "clients": client_states(grid, partitions),
                },
            )
        bar.update()
        bar.set_postfix(loss=row["train_loss"], acc=row["eval_accuracy"])
    bar.close()
    x = np.array(codec.decode(arrays))
    summary = summarize(
        writer.rows,
        scenario=scenario.name,
        runtime=scenario.runtime,
        d=x.size,
        privacy=metadata(scenario, spent),
    )
    writer.finish(summary, x)
    return x
