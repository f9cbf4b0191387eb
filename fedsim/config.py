"""Scenarios: TOML files, `--set key=value` overrides, validated before anything runs.

A bad value raises ScenarioError with one line naming the key, the value and
what is allowed, e.g. `scenario.data.alpha: -1.0 is invalid (input should be
greater than 0)`. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fedsim.algorithms import SERVER_HALVES, AlgorithmParams
from fedsim.data import DataConfig
from fedsim.heterogeneity import Profiles, SystemConfig
from fedsim.models import ModelConfig
from fedsim.privacy.config import PrivacyConfig
from fedsim.privacy.plan import resolve_privacy
from fedsim.registry import load_plugins

RUNTIMES = ("inprocess", "simulation", "deployment")


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return [_without_none(v) for v in value] if isinstance(value, list) else value


class ScenarioError(ValueError):
    """A scenario that cannot run; the message is one line: key, value, what is allowed."""


class SimulationConfig(BaseModel):
    """Resources per ClientApp on Flower's Simulation Engine (Ray)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class Scenario(BaseModel):
    """A whole experiment: data, model, algorithm, system, runtime, rounds, seed."""

    model_config = ConfigDict(extra="forbid")

    name: str = "scenario"
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)
    runtime: Literal["inprocess", "simulation", "deployment"] = "inprocess"
    device: str = "cpu"
    checkpoint_every: int = Field(10, ge=0, description="rounds between checkpoints (0: none)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    algorithm: SerializeAsAny[AlgorithmParams]
    system: SystemConfig = Field(default_factory=SystemConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", v):
            raise ValueError("is not 'cpu', 'cuda' or 'cuda:N'")
        if v.startswith("cuda") and not torch.cuda.is_available():
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
        return _without_none(self.model_dump(mode="json", exclude_none=True))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# ---------------------------------------------------------------- loading


def load_scenario(
    source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> Scenario:
    """Read a TOML file (or a dict), apply `key=value` overrides, validate."""
    if isinstance(source, dict):
        raw = json.loads(json.dumps(source))  # a deep copy we may edit
    else:
        path = Path(source)
        if not path.is_file():
            raise ScenarioError(f"scenario: {str(source)!r} is not a file")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ScenarioError(f"scenario: {str(source)!r} is not valid TOML ({e})") from None
    for item in overrides:
        apply_override(raw, item)
    return validate(raw)


def parse_scenario_json(text: str) -> Scenario:
    """The inverse of Scenario.to_json (re-validated)."""
    return validate(json.loads(text))


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


def validate(raw: dict[str, Any]) -> Scenario:
    """Validate a raw scenario dict; the first problem becomes a ScenarioError."""
    load_plugins()
    raw = dict(raw)
    alg_raw = raw.pop("algorithm", None)
    if not isinstance(alg_raw, dict) or "name" not in alg_raw:
        raise ScenarioError(f"scenario.algorithm.name: missing (allowed: {SERVER_HALVES.names()})")
    name = alg_raw["name"]
    if name not in SERVER_HALVES:
        raise ScenarioError(
            f"scenario.algorithm.name: {name!r} is not one of {SERVER_HALVES.names()}"
        )
    params_cls = SERVER_HALVES.get(name).params
    try:
        algorithm = params_cls.model_validate(alg_raw)
    except ValidationError as e:
        raise ScenarioError(_one_line(e, ("algorithm",), params_cls)) from None
    try:
        scenario = Scenario.model_validate({**raw, "algorithm": algorithm})
    except ValidationError as e:
        raise ScenarioError(_one_line(e, (), Scenario)) from None
    resolve = SERVER_HALVES.get(name).resolve
    try:
        scenario = resolve(scenario) if resolve else scenario
        return resolve_privacy(scenario)
    except ValueError as e:
        raise ScenarioError(f"scenario.{e}") from None


def _one_line(err: ValidationError, prefix: tuple[str, ...], model: type[BaseModel]) -> str:
    e = err.errors(include_url=False)[0]
    loc = tuple(str(p) for p in e["loc"])
    key = "scenario." + ".".join(prefix + loc)
    value, msg, kind = e.get("input"), e["msg"], e["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key (allowed: {_allowed_keys(model, loc[:-1])})"
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
    keys = ("seed", "device", "data", "model", "algorithm", "privacy")
    spec = {k: d[k] for k in keys} | {
        "failures": d["system"]["failures"],
        "adversaries": d["system"]["adversaries"],
    }
    return json.dumps(spec, sort_keys=True)
