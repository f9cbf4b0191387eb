"""Heterogeneous clients: system profiles, availability, failures, and the simulated clock.

A client's round time is latency + bytes_down/downlink + work/speed + bytes_up/uplink
(the FedScale form, docs/algorithms.md section 8): work is the number of training
examples it actually processed and bytes are those of its actual messages. The
round policy turns the cohort's times into the round's time and the set of
replies that count. Every random draw derives from (seed, client, round, stream).
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsim.seeding import derive_seed

# independent random streams per purpose
PROFILE_STREAM, AVAILABILITY_STREAM, FAILURE_STREAM = 11, 12, 13
ADVERSARY_STREAM, ATTACK_STREAM = 14, 15


class Dist(BaseModel):
    """A per-client quantity drawn once per client: lognormal (median, sigma) or uniform."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dist: Literal["lognormal", "uniform"] = Field(
        description="lognormal: median * exp(sigma * N(0, 1)); uniform: between low and high"
    )
    median: float = Field(1.0, gt=0, description="lognormal median")
    sigma: float = Field(0.0, ge=0, description="lognormal shape")
    low: float = Field(1.0, gt=0, description="uniform: the lower end")
    high: float = Field(1.0, gt=0, description="uniform: the upper end (at least low)")

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "lognormal":
            return self.median * np.exp(self.sigma * rng.standard_normal(n))
        if self.high < self.low:
            raise ValueError(f"high={self.high} is below low={self.low}")
        return rng.uniform(self.low, self.high, n)


Quantity = float | list[float] | Dist  # constant, one value per client, or a distribution


def per_client(q: Quantity, n: int, seed: int, key: str, zero_ok: bool = False) -> np.ndarray:
    """The n clients' values of one quantity, from its own seeded stream."""
    if isinstance(q, Dist):
        rng = np.random.default_rng(derive_seed(seed, PROFILE_STREAM, sum(map(ord, key))))
        values = q.draw(n, rng)
    elif isinstance(q, list):
        if len(q) != n:
            raise ValueError(f"{key}: a list needs one value per client ({n}), got {len(q)}")
        values = np.asarray(q, dtype=float)
    else:
        values = np.full(n, float(q))
    if np.any(values < 0) or (not zero_ok and np.any(values == 0)):
        raise ValueError(f"{key}: values must be {'non-negative' if zero_ok else 'positive'}")
    return values


class Availability(BaseModel):
    """Which clients can be selected in a round."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["always", "bernoulli", "markov", "trace"] = Field(
        "always",
        description="every client always; a coin per client and round (p); an on/off Markov"
        " chain per client (p_off, p_on); or time windows read from a trace file",
    )
    p: float = Field(1.0, gt=0, le=1, description="bernoulli: chance to be available")
    p_off: float = Field(0.1, ge=0, le=1, description="markov: on -> off per round")
    p_on: float = Field(0.5, ge=0, le=1, description="markov: off -> on per round")
    trace: str = Field("", description="trace: CSV of client,start_s,end_s windows")

    @model_validator(mode="after")
    def _trace_given(self) -> Availability:
        if self.kind == "trace":
            if not self.trace:
                raise ValueError("kind 'trace' needs trace = 'path/to/windows.csv'")
            if not Path(self.trace).is_file():
                raise ValueError(f"trace file {self.trace!r} does not exist")
        return self


class Failures(BaseModel):
    """Injected failures: one coin per (client, round) picks at most one of them."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    raise_p: float = Field(0.0, ge=0, lt=1, description="the ClientApp raises")
    timeout_p: float = Field(0.0, ge=0, lt=1, description="the client hangs past the timeout")
    vanish_p: float = Field(0.0, ge=0, lt=1, description="the reply is lost mid-round")

    @model_validator(mode="after")
    def _some_client_can_succeed(self) -> Failures:
        if self.raise_p + self.timeout_p + self.vanish_p >= 1:
            raise ValueError("raise_p + timeout_p + vanish_p must be below 1")
        return self


class Adversaries(BaseModel):
    """Byzantine clients: round(fraction * n) partitions, drawn once from the seed, corrupt the
    vector they send (before it is encoded)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fraction: float = Field(0.0, ge=0, lt=1, description="share of clients that attack")
    kind: Literal["sign_flip", "random_sign", "scaled", "nan"] = Field(
        "sign_flip", description="send -v, |v| with random signs, scale * v, or NaNs"
    )
    scale: float = Field(-10.0, description="scaled: the factor")


def adversaries_of(a: Adversaries, n: int, seed: int) -> frozenset[int]:
    """The attacking partitions (the same set on the server and on every client)."""
    return _adversaries(a.fraction, n, seed)


@functools.lru_cache(maxsize=8)
def _adversaries(fraction: float, n: int, seed: int) -> frozenset[int]:
    k = round(fraction * n)
    rng = np.random.default_rng(derive_seed(seed, ADVERSARY_STREAM))
    return frozenset(rng.permutation(n)[:k].tolist())


def corrupt(a: Adversaries, v: np.ndarray, seed: int, server_round: int, pid: int) -> np.ndarray:
    """What an adversary sends instead of v."""
    v = np.asarray(v, dtype=np.float32)
    if a.kind == "sign_flip":
        return -v
    if a.kind == "scaled":
        return np.float32(a.scale) * v
    if a.kind == "nan":
        return np.full_like(v, np.nan)
    rng = np.random.default_rng(derive_seed(seed, server_round, pid, ATTACK_STREAM))
    return np.abs(v) * rng.choice(np.array([-1, 1], dtype=np.float32), v.size)


class SystemConfig(BaseModel):
    """The `[system]` table: client profiles, availability, failures and the round policy."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    speed: Quantity = Field(5000.0, description="training examples per second")
    uplink: Quantity = Field(1.25e6, description="bytes per second, client to server")
    downlink: Quantity = Field(2.5e6, description="bytes per second, server to client")
    latency_s: Quantity = Field(0.05, description="fixed per-round delay, seconds")
    availability: Availability = Field(default_factory=Availability)
    failures: Failures = Field(default_factory=Failures)
    adversaries: Adversaries = Field(default_factory=Adversaries)
    policy: Literal["wait_all", "deadline", "overcommit", "fedbuff"] = Field(
        "wait_all",
        description="wait for every reply; drop replies after deadline_s; invite more clients"
        " and keep the first k; or FedBuff: asynchronous, a server update every buffer_k replies",
    )
    deadline_s: float = Field(
        math.inf, gt=0, allow_inf_nan=True, description="deadline policy: later replies drop"
    )
    overcommit: float = Field(0.0, ge=0, description="overcommit: invite ceil(k (1 + o))")
    buffer_k: int = Field(10, ge=1, description="fedbuff: server update every K arrivals")
    timeout_s: float = Field(3600.0, gt=0, description="a client silent this long has failed")
    idle_s: float = Field(60.0, gt=0, description="clock advance of a round nobody could join")
    tolerate_client_errors: bool = Field(
        False, description="count a client's exception (a bug) as a failure instead of stopping"
    )

    @model_validator(mode="after")
    def _policy_settings(self) -> SystemConfig:
        if self.policy == "deadline" and math.isinf(self.deadline_s):
            raise ValueError("policy 'deadline' needs deadline_s")
        if self.policy == "overcommit" and self.overcommit <= 0:
            raise ValueError("policy 'overcommit' needs overcommit > 0")
        return self


@dataclass
class Profiles:
    """The population's drawn profiles and its availability and failure processes."""

    cfg: SystemConfig
    n: int
    seed: int

    @cached_property
    def _values(self) -> dict[str, np.ndarray]:
        keys = ("speed", "uplink", "downlink", "latency_s")
        return {
            k: per_client(getattr(self.cfg, k), self.n, self.seed, k, k == "latency_s")
            for k in keys
        }

    @property
    def speed(self) -> np.ndarray:
        return self._values["speed"]

    def round_time(self, pid: int, bytes_down: int, work: float, bytes_up: int) -> float:
        v = self._values
        return float(
            v["latency_s"][pid]
            + bytes_down / v["downlink"][pid]
            + work / v["speed"][pid]
            + bytes_up / v["uplink"][pid]
        )

    # -- availability
    @cached_property
    def _windows(self) -> dict[int, list[tuple[float, float]]]:
        out: dict[int, list[tuple[float, float]]] = {}
        with open(self.cfg.availability.trace, newline="") as f:
            for row in csv.DictReader(f):
                out.setdefault(int(row["client"]), []).append(
                    (float(row["start_s"]), float(row["end_s"]))
                )
        return out

    def available_partitions(self, server_round: int, now: float) -> range | np.ndarray:
        """The partitions that can be selected, in increasing order (a range when all can:
        nothing per client is made for a population of millions)."""
        if self.cfg.availability.kind == "always":
            return range(self.n)
        return np.flatnonzero(self.available(server_round, now))

    def available(self, server_round: int, now: float) -> np.ndarray:
        """Boolean mask over clients: who can be selected in this round, at sim time `now`."""
        a = self.cfg.availability
        if a.kind == "always":
            return np.ones(self.n, dtype=bool)
        if a.kind == "bernoulli":
            return self._coins(server_round, AVAILABILITY_STREAM) < a.p
        if a.kind == "markov":
            return self._markov(server_round)
        windows = self._windows
        return np.array(
            [any(s <= now < e for s, e in windows.get(i, ())) for i in range(self.n)], dtype=bool
        )

    def _markov(self, server_round: int) -> np.ndarray:
        """Two-state on/off chain, every client on before round 1, one step per round."""
        a, state = self.cfg.availability, np.ones(self.n, dtype=bool)
        for r in range(1, server_round + 1):
            u = self._coins(r, AVAILABILITY_STREAM)
            state = np.where(state, u >= a.p_off, u < a.p_on)
        return state

    def _coins(self, server_round: int, stream: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, server_round, stream)).random(self.n)

    # -- failures
    def failure(self, server_round: int, pid: int) -> str | None:
        """'raise', 'timeout', 'vanish' or None for this client in this round (one coin)."""
        return failure_of(self.cfg.failures, self.seed, server_round, pid)


INJECTED = "fedsim injected failure"  # in the error reply of an injected raise


class InjectedFailure(RuntimeError):
    """The failure `system.failures.raise_p` asks for (counted, unlike a client's bug)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{INJECTED}: {what}")


def failure_of(f: Failures, seed: int, server_round: int, pid: int) -> str | None:
    """The injected failure of one client in one round; the ClientApp and server agree on it."""
    if not (f.raise_p or f.timeout_p or f.vanish_p):
        return None  # no coin to draw (each client's coin is its own stream: nothing shifts)
    u = np.random.default_rng(derive_seed(seed, server_round, pid, FAILURE_STREAM)).random()
    for kind, p in (("raise", f.raise_p), ("timeout", f.timeout_p), ("vanish", f.vanish_p)):
        if u < p:
            return kind
        u -= p
    return None


def invitations(cfg: SystemConfig, k: int) -> int:
    """Clients to invite for k replies: ceil(k (1 + o)) under overcommit, else k."""
    return math.ceil(k * (1 + cfg.overcommit)) if cfg.policy == "overcommit" else k


def on_time(cfg: SystemConfig, t: float) -> bool:
    """Whether a reply that takes t simulated seconds counts, decided as it arrives.

    Exact for wait_all and deadline; overcommit also needs the other clients' times.
    """
    return t <= cfg.timeout_s and (cfg.policy != "deadline" or t <= cfg.deadline_s)


@dataclass(frozen=True)
class Settled:
    """The outcome of a round under its policy."""

    kept: list[int]  # nodes whose replies count, in cohort order
    late: list[int]  # replies that arrived after the deadline or past the k fastest
    timed_out: list[int]  # no reply within timeout_s (hung, vanished)
    duration: float  # simulated seconds the round took


def settle(cfg: SystemConfig, times: dict[int, float], cohort: list[int], k: int) -> Settled:
    """Apply the round policy to the clients' simulated times (inf = never arrived).

    wait_all: keep every reply that arrives within timeout_s; the round ends with the
    last one (or at the timeout if one is missing). deadline: keep replies by
    deadline_s. overcommit: keep the first k to finish.
    """
    order = [n for n in cohort if n in times]
    timed_out = [n for n in order if times[n] > cfg.timeout_s]
    arrived = [n for n in order if times[n] <= cfg.timeout_s]
    waited = cfg.timeout_s if timed_out else 0.0
    if cfg.policy == "deadline":
        kept = [n for n in arrived if on_time(cfg, times[n])]
        late = [n for n in arrived if not on_time(cfg, times[n])]
        end = cfg.deadline_s if (late or timed_out) else max((times[n] for n in kept), default=0)
        return Settled(kept, late, timed_out, end)
    if cfg.policy == "overcommit":
        fastest = set(sorted(arrived, key=lambda n: (times[n], cohort.index(n)))[:k])
        kept = [n for n in arrived if n in fastest]
        late = [n for n in arrived if n not in fastest]
        end = max((times[n] for n in kept), default=0.0)
        return Settled(kept, late, timed_out, end if len(kept) == k else max(end, waited))
    end = max([times[n] for n in arrived] + [waited], default=0.0)
    return Settled(arrived, [], timed_out, end)
