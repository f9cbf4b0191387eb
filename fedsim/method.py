"""The method contract: a federated method is one unit with typed hyperparameters, typed client
and server state, and a few pure steps over flat float32 tensors, in the shape of FedJAX's
`fed_avg.py`:

    server_init(p, x0, n, seed)           -> S           the server's state (S.x: the model)
    broadcast(p, s, round)                -> S, Downlink what every sampled client is sent
    personalize(p, s, round, pid, down)   -> Downlink    per-client changes (default: none)
    client_init(p, down)                  -> C           a client's state before its first round
    client_round(p, down, c, f, rngs)     -> Upload, C   the local work of a cohort of clients
    server_step(p, s, agg, round)         -> S | None    the new state (None: a void round)

A client round runs for a cohort: every tensor it gets and returns has a leading client
dimension (one client is a cohort of one), so the same code runs client after client or as
one batched computation (clients.objective).

Shapes and signs. The model is one float32 vector of d entries (its parameters, then its
float buffers: fedsim.models); the server's `S.x` is [d], a cohort's `Received.vector` is
[C, d]. A FedAvg-style client uploads its model change `x - x_i` ([C, d], x the model it was
sent, x_i where its local steps ended: the sum of its steps, pointing up the gradient). The
server's `Aggregate.vector` is the weighted mean of the admitted uploads (weights
`Upload.weight`; a robust rule or DP-FedAvg's clipped noisy sum in its place), so a server
step that descends subtracts it: `x - eta_s * agg.vector`. A method may upload anything of
its own length k (signSGD: signs of gradients) as long as its server step reads it so.

A method declares what it supports (`Supports`) and what it costs (`planned_grad_evals`);
loading a scenario refuses any other combination. The units live in `fedsim.methods`; one
adapter in `fedsim.clients` and one in `fedsim.servers` map every method onto Flower's
messages, `Context.state`, codecs and devices, and no method sees a Flower type.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsim.errors import RUNTIMES as RUNTIMES  # re-exported: the CLI reads it light
from fedsim.registry import RegistrationError, Registry, first_line

if TYPE_CHECKING:  # the contract is declared, and a scenario validated, without torch
    import torch
    from torch import Tensor

MECHANISMS = ("dp_sgd", "dp_fedavg", "local")
AGGREGATIONS = ("mean", "median", "trimmed_mean")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class Params(BaseModel):
    """Hyperparameters every method has; a method subclasses this with its own. Numbers are
    finite unless a field says otherwise."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(description="the method; its own keys join these common ones")
    fraction: float = Field(1.0, gt=0, le=1, description="clients sampled per round")
    min_clients: int = Field(1, ge=1, description="lower bound on the sampled cohort")
    aggregation: Literal["mean", "median", "trimmed_mean"] = Field(
        "mean", description="how the server combines the updates (median, trimmed_mean: robust)"
    )
    trim: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: share cut at each end")

    @field_validator("*")
    @classmethod
    def _float32_range(cls, v: Any) -> Any:
        """Numbers meet float32 tensors: a value float32 cannot hold is refused here."""
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, float) and abs(x) > FLOAT32_MAX:
                raise ValueError(f"{x} does not fit in float32 (|value| <= {FLOAT32_MAX:.4g})")
        return v


@dataclass(frozen=True)
class Supports:
    """What a method can run under; anything else is refused when the scenario loads."""

    partial: bool = True  # fraction < 1, or clients that are sometimes unavailable
    overcommit: bool = True  # invite more clients than needed, keep the first k
    deadline: bool = True  # drop replies later than a deadline
    fedbuff: bool = False  # asynchronous buffered aggregation with staleness weights
    privacy: frozenset[str] = frozenset(MECHANISMS)
    aggregation: frozenset[str] = frozenset({"mean"})
    resume: frozenset[str] = frozenset({"inprocess", "simulation"})  # runtimes that resume it
    vectorized: bool = True  # its client round runs a cohort as one batched computation


@dataclass(frozen=True)
class Downlink:
    """What a client is sent: a vector (the model, or what a method sends instead, such as
    the last step) in a wire format, float32 side arrays, and round settings."""

    vector: Tensor
    codec: str = "fp32"
    extra: dict[str, Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """A Downlink as a cohort of C clients reads it: the vectors as a writable [C, d] tensor
    on the clients' device (possibly a reused buffer: copy what you keep), side arrays
    [C, ...] there too, the round's settings and which partitions the rows are."""

    vector: Tensor
    extra: dict[str, Tensor]
    config: dict[str, Any]
    round: int
    partitions: list[int]
    seed: int


@dataclass(frozen=True)
class Upload:
    """A cohort's replies: the vectors they send ([C, k]: for FedAvg-style methods the model
    change x - x_i; what an adversary corrupts and the `local` mechanism noises) in a wire
    format (a codec spec), float32 side arrays [C, ...] (sent as they are, averaged plainly),
    and per client ([C]) the mean loss, gradient evaluations (one per local step), examples
    processed (for the simulated clock) and the weight in the average (a number or [C];
    FedAvg's: the example counts `f.n`)."""

    vector: Tensor
    loss: Tensor
    grad_evals: Tensor
    work: Tensor
    weight: Tensor | float = 1.0
    codec: str = "fp32"
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregate:
    """The server's view of a round's replies: the aggregated vector ([k]: the weighted mean
    of the used uploads, sum_i w_i v_i / sum_i w_i; or the robust rule or DP-FedAvg's noisy
    clipped sum, whichever wraps the method), plain means of the side arrays, and which
    partitions were admitted and which were used (an upload holding NaN or inf is not)."""

    vector: Tensor
    extra: dict[str, Tensor]
    used: list[int]
    received: list[int]


class Oracle(Protocol):
    """The local objectives f_i of a cohort over stacked flat vectors [C, d]
    (fedsim.clients.objective.Cohort): per-client values and gradients of active clients."""

    n: Tensor  # [C] examples per client
    sizes: list[int]

    def bind(self, x: Tensor) -> None: ...
    def batches(self, batch_size: int, steps: int | list[int], gens) -> Iterator: ...
    def all(self) -> Any: ...
    def work(self, batch: Any) -> Tensor: ...
    def loss_grad(self, batch: Any) -> tuple[Tensor, Tensor]: ...
    def sgd_step(self, batch: Any, lr: float) -> Tensor: ...
    def hessian_vector(self, batch: Any, v: Tensor) -> Tensor: ...


P = TypeVar("P", bound=Params)
C = TypeVar("C")
S = TypeVar("S")


class Method:
    """What every method declares: its name, hyperparameters and what it supports."""

    name: ClassVar[str]
    doc: ClassVar[str]
    params: ClassVar[type[Params]]
    supports: ClassVar[Supports] = Supports()
    loop: ClassVar[str | None] = None  # "module:function" that runs instead of FL rounds

    def resolve(self, scenario: Any) -> Any:
        """The scenario with data-dependent settings made concrete (e.g. gamma = 1/L); a
        ValueError "algorithm.key: ..." refuses it."""
        return scenario

    def check(self, scenario: Any) -> None:
        """Method-specific cross-key checks (a ValueError "key: ..." refuses the scenario)."""

    def planned_grad_evals(self, p: Any, n: int, rounds: int, seed: int) -> int:
        """Gradients a client with n examples computes if it takes part in every round (what
        DP-SGD's accountant composes); one per round unless a method says otherwise."""
        return rounds


class FederatedMethod(Method, ABC, Generic[P, C, S]):
    """A method of rounds of client updates: the steps the adapters call."""

    client_state: ClassVar[type | None] = None  # a dataclass of tensors and numbers

    @abstractmethod
    def server_init(self, p: P, x0: Tensor, num_clients: int, seed: int) -> S:
        """The server's state before round 1 (its `x` is the model)."""

    def broadcast(self, p: P, s: S, rnd: int) -> tuple[S, Downlink]:
        """What the round's cohort is sent (default: the model as float32)."""
        return s, Downlink(s.x)

    def personalize(self, p: P, s: S, rnd: int, pid: int, down: Downlink) -> Downlink:
        """What client `pid` is sent instead of the broadcast (default: the broadcast)."""
        return down

    def client_init(self, p: P, down: Received) -> C | None:
        """The cohort's state before each client's first round (stateless methods: None)."""
        return None

    @abstractmethod
    def client_round(
        self, p: P, down: Received, c: C | None, f: Oracle, rngs: list[torch.Generator]
    ) -> tuple[Upload, C | None]:
        """A cohort's round: its replies and its new state."""

    @abstractmethod
    def server_step(self, p: P, s: S, agg: Aggregate, rnd: int) -> S | None:
        """The state after applying the round's aggregate; None keeps the model (void)."""


METHODS: Registry[Method] = Registry("algorithm")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance of the method under its `name`. The class must
    declare its own `name` (a subclass of a method is another method), `params` (a Params
    subclass) and every step of the contract; `doc` defaults to the docstring's first line."""
    what = f"method class {getattr(cls, '__name__', cls)!r}"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise RegistrationError(f"{what} is not a subclass of fedsim.FederatedMethod")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise RegistrationError(f"{what} declares no name of its own (name: ClassVar[str])")
    params = getattr(cls, "params", None)
    if not (isinstance(params, type) and issubclass(params, Params)):
        raise RegistrationError(f"{what} declares no params (a subclass of fedsim.Params)")
    if inspect.isabstract(cls):
        missing = sorted(cls.__abstractmethods__)
        raise RegistrationError(f"{what} does not define the steps {missing}")
    if not issubclass(cls, FederatedMethod) and cls.loop is None:
        raise RegistrationError(f"{what} is neither a FederatedMethod nor declares a loop")
    state = getattr(cls, "client_state", None)
    if state is not None and not dataclasses.is_dataclass(state):
        raise RegistrationError(f"{what}: client_state {state!r} is not a dataclass")
    if "doc" not in cls.__dict__:
        cls.doc = first_line(cls) or name
    METHODS.register(name, cls(), cls.doc)
    return cls


# ---------------------------------------------------------------- state as arrays and numbers


def state_row(state: Any, c: int) -> Any:
    """Client c's state out of a cohort's stacked state (tensors [C, ...]; numbers [C])."""
    from torch import Tensor

    rows = {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if isinstance(v, Tensor):
            v = int(v[c]) if f.type == "int" else v[c]
        rows[f.name] = v
    return type(state)(**rows)


def overlay(stacked: Any, c: int, row: Any) -> Any:
    """The stacked state with client c's row replaced by `row` (in place; returns it)."""
    from torch import Tensor

    for f in dataclasses.fields(stacked):
        v, r = getattr(stacked, f.name), getattr(row, f.name)
        if isinstance(v, Tensor) and r is not None:
            v[c] = r
    return stacked


def state_to_parts(state: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A state dataclass as float32/int arrays and JSON numbers (None fields left out)."""
    from torch import Tensor

    arrays, values = {}, {}
    for f in dataclasses.fields(state):
        v = getattr(state, f.name)
        if v is None:
            continue
        if isinstance(v, Tensor):
            arrays[f.name] = v.detach().cpu().numpy()
        elif isinstance(v, np.ndarray):
            arrays[f.name] = v
        else:
            values[f.name] = v
    return arrays, values


def state_from_parts(cls: type, arrays: dict[str, np.ndarray], values: dict[str, Any], device):
    """The inverse of state_to_parts: tensors on `device` (writable copies)."""
    import torch

    kwargs: dict[str, Any] = {
        k: torch.tensor(np.array(a), device=device) for k, a in arrays.items()
    }
    kwargs.update(values)
    return cls(**kwargs)
