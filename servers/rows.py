"""The one typed metrics row every loop writes (synchronous rounds, FedBuff, split learning),
and the per-client rows of clients.jsonl."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One server update. Optional figures (None) are left out of metrics.jsonl."""

    round: int
    train_loss: float | None  # clients' mean minibatch loss, weighted by examples
    eval: dict[str, float]  # eval_loss, eval_accuracy (and dist_to_opt, rel_dist_to_opt)
    bytes_up: int
    bytes_down: int
    grad_evals: int
    sim_time_s: float
    wall_s: float
    clients: int  # replies that counted
    extra: dict[str, Any] = field(default_factory=dict)  # a loop's own figures (leaks, ...)
    rejected: int | None = None  # non-finite updates kept out of the model
    epsilon: float | None = None  # the worst privacy loss so far
    epsilon_participation: float | None = None  # over clients' actual participations
    updated: bool | None = None  # False: a void round, the model stayed
    invited: int | None = None
    available: int | None = None
    failures: int | None = None  # injected raises and lost nodes
    timeouts: int | None = None
    dropouts: int | None = None
    late: int | None = None
    staleness_mean: float | None = None  # FedBuff
    staleness_max: int | None = None
    client_errors: int | None = None  # client bugs counted under tolerate_client_errors
    diverged: bool | None = None  # the model or the clients' loss became non-finite

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        head = {"round": d.pop("round"), "train_loss": finite_or_none(d.pop("train_loss"))}
        head.update({k: finite_or_none(v) for k, v in d.pop("eval").items()})
        head.update(d.pop("extra"))
        return head | {k: v for k, v in d.items() if v is not None}


def finite_or_none(v: float | None) -> float | None:
    """JSON has no NaN: a non-finite figure is written as null (and the run says why)."""
    return v if v is None or math.isfinite(v) else None
