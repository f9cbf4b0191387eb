"""The scenario reference: every key a scenario and a sweep file accept (type, default, allowed
values, description), every method's keys and refusals, every dataset's and model's options and
the codecs, generated from the pydantic schema and the registries so it cannot drift from what
fedsim accepts. `fedsim list --keys` prints it; the docs build writes reference/scenario.md."""

from __future__ import annotations

import inspect
import json
import math
import types
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedsim.codecs import CODEC_FAMILIES, CODECS
from fedsim.config import Scenario
from fedsim.data import DATASETS
from fedsim.method import AGGREGATIONS, MECHANISMS, METHODS, RUNTIMES, Method, Params
from fedsim.models import MODELS, ModelConfig
from fedsim.registry import Entry, Registry, load_builtins
from fedsim.sweeps import SweepConfig

HEADER = "| Key | Type | Default | Allowed | Description |\n|---|---|---|---|---|"
BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="))
UNIONS = (Union, types.UnionType)
INTRO = """# Scenario reference

Generated from fedsim's schema and registries; `fedsim list --keys` prints the same page. A
scenario is a TOML file of the tables below, and `fedsim run --set KEY=VALUE` sets any key by
its dotted name (`--set data.alpha=0.1`). Numbers are finite unless a key allows inf; *unset*
means the key is left out (TOML has no null). What a plug-in registers is marked with its name."""


def scenario_reference() -> str:
    """The reference as Markdown, from the schema and what is registered now (fedsim's own
    entries, and a plug-in's once it is imported): the same text on every call."""
    load_builtins()
    common = ", ".join(f"`{n}`" for n in Params.model_fields)
    parts = [
        INTRO,
        "## Scenario keys",
        *tables(Scenario, [""]),
        "## Methods",
        f"`algorithm.name` picks one; its keys join the common `[algorithm]` keys ({common}).",
        *map(method_section, METHODS),
        "## Datasets",
        "`data.dataset` picks one; its options are the keys of `[data.options]`.",
        *map(dataset_section, DATASETS),
        "## Models",
        "`model.name` picks one; its options are further keys of `[model]`.",
        *map(model_section, MODELS),
        "## Codecs",
        "A method's `uplink` key takes a codec spec: a name, or `NAME:PARAM` for a family.",
        codecs(),
        "## Sweep files",
        "`fedsim sweep FILE` crosses a base scenario with axes and seeds; an axis key is any"
        " scenario key above.",
        *tables(SweepConfig, [""]),
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- tables of keys


def tables(
    model: type[BaseModel], paths: list[str], many: bool = False, note: str = ""
) -> list[str]:
    """A section of `model`'s keys at `paths` (dotted; "" is the top level; `many`: an array of
    tables; `note`: the key's own description), then one per table inside it, plain tables
    first; tables of one kind side by side (`system.speed`, `system.uplink`) share one."""
    rows, inner = [], {}
    for name, field in model.model_fields.items():
        if not is_table(field.annotation):
            rows.append(row(name, field))
        for sub, in_list in models_in(field.annotation):
            inner.setdefault((sub, in_list), []).append((name, field))
    titles = [f"`[[{p}]]`" if many else f"`[{p}]`" for p in paths if p] or ["Top level"]
    intro = [f"{note[:1].upper()}{note[1:]}." if note else "", doc(model)]
    out = [section(", ".join(titles), "\n\n".join(filter(None, intro)), rows)]
    order = sorted(inner.items(), key=lambda kv: (kv[0][1], not is_table(kv[1][0][1].annotation)))
    for (sub, in_list), fields in order:
        notes = [f.description for _, f in fields if is_table(f.annotation) and f.description]
        subpaths = [f"{p}.{name}".lstrip(".") for p in paths for name, _ in fields]
        out += tables(sub, subpaths, in_list, "; ".join(notes))
    return out


def section(title: str, intro: str, rows: list[str], none: str = "No keys.") -> str:
    """A `###` section: its title, an introduction and the table of its keys."""
    table = "\n".join([HEADER, *rows]) if rows else none
    return "\n\n".join(p for p in (f"### {title}", intro, table) if p)


def row(name: str, field: FieldInfo) -> str:
    """One key's table row: name, type, default, allowed values, description."""
    text = " ".join((field.description or "").split())
    return line(f"`{name}`", kind(field.annotation), default(field), allowed(field), text)


def line(*cells: str) -> str:
    """A Markdown table row (a `|` inside a cell escaped)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def models_in(tp: Any, in_list: bool = False) -> list[tuple[type[BaseModel], bool]]:
    """The pydantic models a type holds (a union's, a list's items), each with whether it sits
    in a list (an array of tables)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tp, in_list)]
    in_list = in_list or get_origin(tp) is list
    return [m for arg in get_args(tp) for m in models_in(arg, in_list)]


def is_table(tp: Any) -> bool:
    """Whether a key is a table and nothing else (optional or not): a section, not a row."""
    members = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in UNIONS else []
    one = members[0] if len(members) == 1 else tp
    return isinstance(one, type) and issubclass(one, BaseModel)


def kind(tp: Any) -> str:
    """How a value is written, in TOML's terms ("or" between a union's members)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return kind(args[0])
    if origin in UNIONS:
        return " or ".join(dict.fromkeys(kind(a) for a in args if a is not type(None)))
    if origin is Literal:
        return " or ".join(dict.fromkeys(type(v).__name__ for v in args))
    if origin is list:
        return f"list[{kind(args[0])}]"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "table"
    return "any" if tp is Any else tp.__name__


def default(field: FieldInfo) -> str:
    """The default as TOML, "unset", or "required"."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return "unset" if value is None else f"`{toml(value)}`"


def toml(value: Any) -> str:
    """A value as a TOML scenario writes it (inline)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(map(toml, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def allowed(field: FieldInfo) -> str:
    """A key's allowed values: its bounds, a registry's names, its type's choices."""
    checks = [getattr(getattr(m, "func", None), "__self__", None) for m in field.metadata]
    own = [*limits(field.metadata), *(quoted(r.names()) for r in checks if isinstance(r, Registry))]
    return ", ".join(p for p in (*own, choices(field.annotation)) if p)


def limits(metadata: Iterable[Any]) -> list[str]:
    """Bounds, length, pattern and inf from a field's (or an Annotated type's) constraints."""
    out = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out += limits(m.metadata)
            continue
        out += [f"{s} {toml(getattr(m, a))}" for a, s in BOUNDS if getattr(m, a, None) is not None]
        if getattr(m, "pattern", None):
            out.append(f"matches {m.pattern}")
        if getattr(m, "allow_inf_nan", False):
            out.append("inf allowed")
    return out


def choices(tp: Any) -> str:
    """The values a type allows beyond its kind: Literal choices, an Annotated member's bounds,
    a list's items'; a union's members each (named by kind where there are several)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return ", ".join(filter(None, (choices(args[0]), *limits(args[1:]))))
    if origin is Literal:
        return quoted(args)
    if origin is list:
        items = choices(args[0])
        return f"items: {items}" if items else ""
    if origin not in UNIONS:
        return ""
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:
        return choices(members[0])
    if not any(map(choices, members)):
        return ""
    named = [choices(m) if get_origin(m) is Literal else f"{kind(m)} {choices(m)}" for m in members]
    return " or ".join(n.strip() for n in named)


def quoted(values: Iterable[Any]) -> str:
    """Values as TOML in code spans, comma-separated."""
    return ", ".join(f"`{toml(v)}`" for v in values)


def doc(obj: Any) -> str:
    """A class's docstring as Markdown: each paragraph on one line, lists kept as they are."""
    blocks = inspect.cleandoc(obj.__doc__ or "").split("\n\n")
    return "\n\n".join(b if b.startswith("- ") else " ".join(b.split()) for b in blocks)


def marked(e: Entry) -> str:
    """An entry's description, marked with the plug-in that registered it."""
    text = " ".join(e.doc.split()).rstrip(".")
    return text + (f" (plug-in `{e.origin}`)" if e.origin else "")


# ---------------------------------------------------------------- registries


def method_section(e: Entry[Method]) -> str:
    """A method: its description, its own keys and what it refuses (its `Supports`)."""
    rows = [
        row(n, f)
        for n, f in e.obj.params.model_fields.items()
        if n not in Params.model_fields or repr(f) != repr(Params.model_fields[n])
    ]
    intro = marked(e) + "\n\n" + refusals(e.obj)
    return section(f"`{e.name}`", intro, rows, "No keys besides the common ones.")


def refusals(method: Method) -> str:
    """The combinations a method's `Supports` declines, refused when a scenario loads."""
    s = method.supports
    out = []
    if not s.partial:
        out.append(
            "`algorithm.fraction` below 1, and `system.availability.kind` other than"
            ' `"always"`: it needs every client in every round'
        )
    pairs = (
        ("system.policy", [p for p in ("overcommit", "deadline", "fedbuff") if not getattr(s, p)]),
        ("privacy.mechanism", [m for m in MECHANISMS if m not in s.privacy]),
        ("algorithm.aggregation", [a for a in AGGREGATIONS if a not in s.aggregation]),
        ("execution", [] if s.vectorized else ["vectorized"]),
    )
    out += [f"`{key}` = {quoted(values)}" for key, values in pairs if values]
    if not_resumed := [r for r in RUNTIMES if r not in s.resume]:
        out.append(f"`fedsim run --resume` of a run whose `runtime` = {quoted(not_resumed)}")
    if not out:
        return "Refuses none of the combinations a method may decline."
    return "Refuses:\n\n" + "\n".join(f"- {r}" for r in out)


def dataset_section(e: Entry) -> str:
    """A dataset: its description, how it may be split, and its `[data.options]`."""
    split = {
        True: 'its own client split: `data.partitioner` must be `"natural"`',
        False: 'no client ids: `data.partitioner` `"natural"` is refused',
        None: "any `data.partitioner` (natural: by its client ids)",
    }[e.obj.natural]
    rows = [row(n, f) for n, f in e.obj.options.model_fields.items()]
    return section(f"`{e.name}`", f"{marked(e)}. Split: {split}.", rows, "Takes no options.")


def model_section(e: Entry) -> str:
    """A model: its description and its options (the `[model]` keys besides the common ones)."""
    rows = [row(n, f) for n, f in e.obj.options.model_fields.items()]
    common = " and ".join(f"`{n}`" for n in ModelConfig.model_fields)
    return section(f"`{e.name}`", marked(e), rows, f"Takes no options besides {common}.")


def codecs() -> str:
    """The codec specs a method's `uplink` takes: the codecs and the one-parameter families."""
    rows = [line(f"`{e.name}`", marked(e)) for e in CODECS]
    rows += [line(f"`{e.name}:{e.obj.param}`", marked(e)) for e in CODEC_FAMILIES]
    return "\n".join(["| Spec | Description |", "|---|---|", *rows])
