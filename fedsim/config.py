"""Scenarios: TOML files, `--set key=value` overrides, validated before anything runs.

A bad value raises ScenarioError with one line naming the key, the value and
what is allowed, e.g. `scenario.data.alpha: -1.0 is invalid (input should be
greater than 0)`. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedsim.data import DataConfig, client_data, load_dataset
from fedsim.errors import ScenarioError
from fedsim.heterogeneity import Profiles, SystemConfig
from fedsim.method import METHODS, FederatedMethod, Method, Params
from fedsim.models import MODELS, ModelConfig, build_model, float_buffers, takes_ids
from fedsim.plugins import Plugin, PluginError, activate, resolve, unique
from fedsim.registry import Registry
from fedsim.tracking import MODULES, TrackingConfig

if TYPE_CHECKING:  # torch is imported where a check builds a model: a refusal before needs none
    from torch import nn

# (scenario) -> scenario run last when a scenario loads (privacy registers its calibration)
RESOLVERS: Registry[Callable[[Any], Any]] = Registry("scenario resolver")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return [_without_none(v) for v in value] if isinstance(value, list) else value


class PrivacyConfig(BaseModel):
    """Which mechanism, how much noise (or a target epsilon), the clipping norm and delta.

    - `dp_sgd`: sample-level DP-SGD in local training (per-example clipping and Gaussian
      noise, Poisson batches of expected size `algorithm.batch_size`);
    - `dp_fedavg`: client-level DP: each client update clipped to C, Gaussian noise at the
      server, Poisson cohorts at rate `algorithm.fraction`;
    - `local`: every client clips and noises the vector it sends (before encoding).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mechanism: Literal["none", "dp_sgd", "dp_fedavg", "local"] = Field(
        "none", description="no DP, or one of the mechanisms above"
    )
    epsilon: float | None = Field(
        None, gt=0, allow_inf_nan=True, description="target epsilon (inf: no noise)"
    )
    noise_multiplier: float | None = Field(
        None, ge=0, description="sigma (noise std / C); when both are set, the one used"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="C: the clipping norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta of (epsilon, delta)-DP")
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Opacus's accountant that turns the noise into epsilon: RDP or PRV"
    )
    epsilon_report: Literal["every_round", "participation"] | None = Field(
        None,
        description="dp_sgd and local: the rows' epsilon as if the most exposed client took"
        " part in every round (conservative; what a target is calibrated for) or over each"
        " client's actual participations; default every_round (participation under fedbuff)",
    )

    @model_validator(mode="after")
    def _one_noise_setting(self) -> PrivacyConfig:
        if self.mechanism == "none":
            return self
        if self.epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                f"mechanism {self.mechanism!r} needs epsilon (a target) or noise_multiplier"
            )
        if self.epsilon is not None and math.isnan(self.epsilon):
            raise ValueError("epsilon: nan is not a number")
        if self.epsilon is not None and math.isinf(self.epsilon):
            return self.model_copy(update={"noise_multiplier": 0.0})
        return self

    @property
    def active(self) -> bool:
        return self.mechanism != "none"


class SimulationConfig(BaseModel):
    """Resources per ClientApp on Flower's Simulation Engine (Ray), and the Ray cluster:
    `address` ("auto", or the head's HOST:PORT) attaches to a running cluster instead of
    starting a local Ray with this machine's cores."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_cpus: float = Field(1.0, gt=0, description="CPU cores Ray reserves for each ClientApp")
    num_gpus: float = Field(0.0, ge=0, description="GPUs (a fraction shares one) per ClientApp")
    address: str | None = Field(
        None,
        min_length=1,
        description="a running Ray cluster: 'auto' or the head's HOST:PORT (unset: a local Ray)",
    )


class Scenario(BaseModel):
    """A whole experiment: data, model, algorithm, system, runtime, rounds, seed."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(
        "scenario", description="names the run: its default directory runs/NAME-TIMESTAMP"
    )
    plugins: list[Plugin] = Field(
        default_factory=list,
        description="module names, .py files or package folders (relative to the scenario file)"
        " imported before the rest is read (fedsim/plugins.py); a run records them as tables",
    )
    seed: int = Field(
        0, ge=0, description="every random draw of the run derives from it (data, model, clients)"
    )
    rounds: int = Field(
        10, ge=1, description="federated rounds (under system.policy 'fedbuff': server updates)"
    )
    runtime: Literal["inprocess", "simulation", "deployment"] = Field(
        "inprocess",
        description="fedsim's in-process engine, Flower's Simulation Engine (Ray), or a Flower"
        " deployment (a SuperLink and SuperNodes)",
    )
    execution: Literal["auto", "vectorized", "sequential"] = Field(
        "auto", description="in-process: a round's clients as batched cohorts, or one by one"
    )
    cohort_memory_gb: float | None = Field(
        None, gt=0, description="memory a batched cohort may use (default: RAM/4, free GPU/2)"
    )
    device: str = Field("cpu", description="where models train: 'cpu', 'cuda' or 'cuda:N'")
    checkpoint_every: int = Field(10, ge=0, description="rounds between checkpoints (0: none)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: SerializeAsAny[Params]
    system: SystemConfig = Field(default_factory=SystemConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError("is not 'cpu', 'cuda' or 'cuda:N'")
        if v.startswith("cuda") and not _cuda_available():
            raise ValueError("is not available on this machine (no CUDA device)")
        return v

    @field_validator("system")
    @classmethod
    def _profiles_fit_population(cls, v: SystemConfig, info: ValidationInfo) -> SystemConfig:
        """Per-client lists must fit data.num_clients: checked now, not mid-run."""
        data = info.data.get("data")
        if data is not None:
            Profiles(v, data.num_clients, info.data.get("seed", 0)).round_time(0, 0, 0.0, 0)
        return v

    def to_dict(self) -> dict[str, Any]:
        """Plain data without unset (None) values, also inside free-form tables such as
        `data.options` (TOML has no null)."""
        d = _without_none(self.model_dump(mode="json", exclude_none=True))
        if not d["plugins"]:  # a scenario without plug-ins reads as before they existed
            del d["plugins"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict(), multiline_strings=True)

    @property
    def method(self) -> Method:
        """The method unit this scenario runs."""
        return METHODS.get(self.algorithm.name)


# ---------------------------------------------------------------- loading


def load_scenario(
    source: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    plugins: list[str] | tuple[str, ...] = (),
) -> Scenario:
    """Read a TOML file (or a dict), apply `key=value` overrides (text, read as TOML) and
    `values` ({"a.b": value}), validate. Plug-ins given as paths are found relative to the
    file (a dict's: the current directory); `plugins` adds more, relative to the current
    directory (`--plugin`)."""
    base = Path.cwd()
    if isinstance(source, dict):
        raw = json.loads(json.dumps(source))  # a deep copy we may edit
    else:
        path = Path(source)
        if (path / "pyproject.toml").is_file():
            raise ScenarioError(
                f"scenario: {str(source)!r} is a folder with a pyproject.toml; a Flower App"
                f" runs with `fedsim flower run {source}`"
            )
        if not path.is_file():
            raise ScenarioError(f"scenario: {str(source)!r} is not a file")
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ScenarioError(f"scenario: {str(source)!r} is not UTF-8 text ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise ScenarioError(f"scenario: {str(source)!r} is not valid TOML ({e})") from None
        base = path.parent
    raw["plugins"] = with_plugins(raw.get("plugins", []), base, plugins)
    for item in overrides:
        apply_override(raw, item)
    for key, value in (values or {}).items():
        set_key(raw, key, value)
    return validate(raw)


def with_plugins(listed: Any, base: Path, added: list[str] | tuple[str, ...] = ()) -> list:
    """A scenario's plug-ins (paths relative to `base`) and `added` ones (paths relative to
    the current directory), resolved: their files read now, as the run will carry them."""
    try:
        plugins = unique(resolve(listed, base) + resolve(list(added), Path.cwd()))
        return [p.model_dump(exclude_none=True) for p in plugins]
    except PluginError as e:
        raise ScenarioError(f"scenario.{e}", e.details) from None


def load_plugins(refs: list[str] | tuple[str, ...] = ()) -> None:
    """fedsim's own registrations, the installed plug-ins and `refs` (module names or paths
    relative to the current directory), imported in this process."""
    try:
        activate(unique(resolve(list(refs), Path.cwd())))
    except PluginError as e:
        raise ScenarioError(f"{e}", e.details) from None


def parse_scenario_json(text: str, where: str = "") -> Scenario:
    """The inverse of Scenario.to_json (re-validated; `where` names this process's node in
    a plug-in's errors)."""
    return validate(json.loads(text), where)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in the nested dict; the value is read as TOML, else as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError(f"--set: {item!r} is not of the form key=value (e.g. rounds=5)")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    set_key(raw, key, value)


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw["a"]["b"]["c"] = value for key "a.b.c", creating tables on the way."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"scenario.{key}: cannot set inside {part!r}, which is a value")
        node = child
    node[leaf] = value


def validate(raw: dict[str, Any], where: str = "") -> Scenario:
    """Validate a raw scenario dict, its plug-ins imported first (`where` names this
    process's node in their errors); the first problem becomes a ScenarioError."""
    raw = dict(raw)
    try:
        plugins = unique(resolve(raw.get("plugins", []), Path.cwd()))
        activate(plugins, where)
    except PluginError as e:
        raise ScenarioError(f"scenario.{e}", e.details) from None
    raw["plugins"] = plugins
    check_model_options(raw.get("model"))
    alg_raw = raw.pop("algorithm", None)
    if not isinstance(alg_raw, dict) or "name" not in alg_raw:
        raise ScenarioError(f"scenario.algorithm.name: missing (allowed: {METHODS.names()})")
    name = alg_raw["name"]
    if not isinstance(name, str) or name not in METHODS:
        raise ScenarioError(f"scenario.algorithm.name: {name!r} is not one of {METHODS.names()}")
    method = METHODS.get(name)
    try:
        algorithm = method.params.model_validate(alg_raw)
    except ValidationError as e:
        raise ScenarioError(_one_line(e, ("algorithm",), method.params)) from None
    try:
        scenario = Scenario.model_validate({**raw, "algorithm": algorithm})
    except ValidationError as e:
        raise ScenarioError(_one_line(e, (), Scenario)) from None
    try:
        scenario = method.resolve(scenario)
        check_supported(method, scenario)
        method.check(scenario)
        check_data_and_model(scenario)
        check_runtime(scenario)
        for resolver in RESOLVERS:
            scenario = resolver.obj(scenario)
    except ValueError as e:
        raise ScenarioError(f"scenario.{e}") from None
    return scenario


def check_model_options(model: Any) -> None:
    """The `[model]` keys besides the common ones (`name`, `buffers`) against the model's own
    options, so a bad key is named as `scenario.model.KEY`."""
    if not isinstance(model, dict) or model.get("name", "mlp") not in MODELS:
        return  # reported by the schema
    options = MODELS.get(model.get("name", "mlp")).options
    common = sorted(ModelConfig.model_fields)
    try:
        options.model_validate({k: v for k, v in model.items() if k not in common})
    except ValidationError as e:
        raise ScenarioError(_one_line(e, ("model",), options, common)) from None


def check_installed(tracking: TrackingConfig) -> None:
    """A tracker backend that is not installed stops the run before it starts. Checked where
    runs are launched, not in every process that reads the scenario (a deployment's
    SuperLink need not have the submitter's trackers)."""
    for name in tracking.backends:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise ScenarioError(
                f"scenario.tracking.backends: {name!r} is not installed"
                f" (allowed: install it with pip install 'fedsim-flwr[{name}]')"
            )


def check_runtime(scenario: Scenario) -> None:
    """Refuse a Ray cluster address on a runtime that would not use it."""
    if scenario.simulation.address and scenario.runtime != "simulation":
        raise ValueError(
            f"simulation.address: {scenario.simulation.address!r} is only used by runtime"
            f" 'simulation' (this scenario's runtime is {scenario.runtime!r})"
        )


def check_supported(method: Method, scenario: Scenario) -> None:
    """Refuse any option the method does not declare it supports, naming both keys."""
    sup, a, system = method.supports, scenario.algorithm, scenario.system
    by = f"algorithm.name = {method.name!r}"
    if not sup.partial and a.fraction < 1:
        raise ValueError(
            f"algorithm.fraction: {a.fraction} leaves clients out, and {by} needs every client"
            " in every round (set 1)"
        )
    if not sup.partial and system.availability.kind != "always":
        raise ValueError(
            f"system.availability.kind: {system.availability.kind!r} makes clients miss rounds,"
            f" and {by} needs every client in every round (use 'always')"
        )
    policies = {
        "overcommit": sup.overcommit,
        "deadline": sup.deadline,
        "fedbuff": sup.fedbuff,
        "wait_all": True,
    }
    if not policies[system.policy]:
        allowed = [k for k, ok in policies.items() if ok]
        raise ValueError(
            f"system.policy: {system.policy!r} is not supported by {by} (allowed: {allowed})"
        )
    mech = scenario.privacy.mechanism
    if mech != "none" and mech not in sup.privacy:
        raise ValueError(
            f"privacy.mechanism: {mech!r} is not supported by {by} (allowed: {sorted(sup.privacy)})"
        )
    if a.aggregation not in sup.aggregation:
        raise ValueError(
            f"algorithm.aggregation: {a.aggregation!r} is not supported by {by}"
            f" (allowed: {sorted(sup.aggregation)})"
        )
    if mech == "dp_fedavg" and (a.min_clients != 1 or system.policy == "overcommit"):
        key, value = (
            ("algorithm.min_clients", a.min_clients)
            if a.min_clients != 1
            else ("system.policy", "overcommit")
        )
        raise ValueError(
            f"{key}: {value!r} with privacy.mechanism 'dp_fedavg': its accountant assumes each"
            " client joins a round independently with probability algorithm.fraction (Poisson"
            " sampling, possibly an empty cohort), which a minimum or extra invitations break"
        )
    if mech == "dp_fedavg" and a.aggregation != "mean":
        raise ValueError(
            f"algorithm.aggregation: {a.aggregation!r} with privacy.mechanism 'dp_fedavg':"
            " the noise is calibrated to a clipped sum (use 'mean')"
        )
    if scenario.execution == "vectorized":
        why = None
        if scenario.runtime != "inprocess":
            why = f"runtime {scenario.runtime!r} runs each client in its own ClientApp"
        elif not sup.vectorized:
            why = f"{by} has no batched client round"
        if why:
            raise ValueError(f"execution: 'vectorized' is not possible: {why} (use 'auto')")
    if system.policy == "fedbuff" and mech == "dp_fedavg":
        raise ValueError(
            "privacy.mechanism: 'dp_fedavg' with system.policy 'fedbuff': the accountant"
            " assumes a sampled cohort per round, which asynchronous buffering does not have"
        )
    if scenario.privacy.epsilon_report is not None and mech not in ("dp_sgd", "local"):
        raise ValueError(
            f"privacy.epsilon_report: {scenario.privacy.epsilon_report!r} is for the"
            f" client-side mechanisms 'dp_sgd' and 'local', not {mech!r}"
        )
    if system.policy == "fedbuff" and scenario.privacy.epsilon_report == "every_round":
        raise ValueError(
            "privacy.epsilon_report: 'every_round' with system.policy 'fedbuff': there are no"
            " rounds to take part in (use 'participation')"
        )
    if system.policy == "fedbuff" and mech != "none" and scenario.privacy.noise_multiplier is None:
        raise ValueError(
            "privacy.epsilon: a target cannot be planned for system.policy 'fedbuff' (a client"
            " may train any number of times); give privacy.noise_multiplier, and each row"
            " reports the epsilon spent"
        )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def meta_model(scenario: Scenario) -> nn.Module:
    """The scenario's model on the meta device: its shapes and layers, no memory."""
    import torch

    ds = load_dataset(scenario.data, scenario.seed)
    with torch.device("meta"):
        return build_model(scenario.model, ds.x_train.shape[1], ds.num_classes, 0)


def check_data_and_model(scenario: Scenario) -> None:
    """The data loads and splits, and the model can be built for it (shapes only, on the
    meta device)."""
    if not isinstance(scenario.method, FederatedMethod):
        check_buffers(scenario, None)
        return
    try:
        ds = load_dataset(scenario.data, scenario.seed)
        client_data(scenario.data, scenario.seed, 0)  # partitions (or generates) the clients
    except (ValueError, OSError) as e:
        raise ValueError(f"data: {e}") from None
    try:
        model = meta_model(scenario)
    except ValueError as e:
        raise ValueError(f"{e} (data.dataset {scenario.data.dataset!r})") from None
    check_buffers(scenario, model)
    ids = not np.issubdtype(ds.x_train.dtype, np.floating)
    if ids != takes_ids(model):
        what = f"{ds.x_train.dtype} token ids" if ids else "float features"
        raise ValueError(
            f"model.name: {scenario.model.name!r} cannot read what data.dataset"
            f" {scenario.data.dataset!r} holds ({what}; text_bow and char_lstm read ids, the"
            " others features)"
        )


def check_buffers(scenario: Scenario, model: nn.Module | None) -> None:
    """`model.buffers = "local"` only where it keeps something: float buffers of the model a
    federated method trains (`model` None: the method trains no [model])."""
    if scenario.model.buffers != "local":
        return
    if model is None:
        raise ValueError(
            f"model.buffers: 'local' keeps the [model]'s float buffers on the clients, and"
            f" algorithm.name = {scenario.method.name!r} does not train the [model]"
            " (use 'average')"
        )
    if not float_buffers(model):
        raise ValueError(
            f"model.buffers: 'local' keeps float buffers (BatchNorm's running statistics) on"
            f" the clients, and model.name {scenario.model.name!r} has none: nothing to keep"
            " (use 'average')"
        )


def _one_line(
    err: ValidationError, prefix: tuple[str, ...], model: type[BaseModel], also: list[str] = ()
) -> str:
    e = err.errors(include_url=False)[0]
    loc = tuple(str(p) for p in e["loc"])
    key = "scenario." + ".".join(prefix + loc)
    value, msg, kind = e.get("input"), e["msg"], e["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (allowed: {sorted([*also, *_allowed_keys(model, loc[:-1])])})"
    if kind == "missing":
        return f"{key}: missing (required)"
    msg = msg.removeprefix("Value error, ")
    if kind == "value_error":
        scalar = isinstance(value, str | int | float | bool) and repr(value) not in msg
        return f"{key}: {value!r} {msg}" if scalar else f"{key}: {msg}"
    return f"{key}: {value!r} is invalid ({msg[0].lower()}{msg[1:]})"


def _allowed_keys(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, for 'unknown key' messages."""
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def client_spec(scenario: Scenario) -> str:
    """The JSON a client receives in every round's config (`spec`): what it needs to train."""
    d = scenario.to_dict()
    keys = ("plugins", "seed", "device", "data", "model", "algorithm", "privacy")
    spec = {k: d.get(k, []) for k in keys} | {
        "failures": d["system"]["failures"],
        "adversaries": d["system"]["adversaries"],
    }
    return json.dumps(spec, sort_keys=True)
