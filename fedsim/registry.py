"""Named registries: how the core finds algorithms, datasets, models and codecs.

The core (`fedsim`) never imports `fedsim.methods`, `fedsim.privacy`, `fedsim.clients` or
`fedsim.servers` directly; `load_builtins()` imports the first two by name and they register
what they provide (methods; the privacy calibration). The apps are found by their Flower
component references (fedsim.runtime). A user's plug-ins register into the same tables
(fedsim/plugins.py), each entry marked with the plug-in it came from. `fedsim list` prints
every registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

BUILTINS = ("fedsim.methods", "fedsim.privacy")
_origin = ""  # the plug-in being imported now ("" while fedsim registers its own)


class RegistrationError(ValueError):
    """A registration refused: a taken name, or an object that does not meet its contract."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its name, a one-line description, the object, and the plug-in
    that registered it ("" for fedsim's own)."""

    name: str
    doc: str
    obj: T
    origin: str = ""


class Registry(Generic[T]):
    """A name -> object table with a description per entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, doc: str = "") -> T:
        """Add `name`; a second, different object under a taken name is refused."""
        old = self._entries.get(name)
        if old is not None and old.obj is not obj:
            by = f"plug-in {old.origin!r}" if old.origin else "fedsim"
            raise RegistrationError(f"{self.kind} {name!r} is already registered by {by}")
        doc = doc or (getattr(obj, "__doc__", "") or "").strip()
        self._entries[name] = Entry(name, doc, obj, _origin)
        return obj

    def __call__(self, name: str, doc: str = "") -> Any:
        """Decorator form: `@DATASETS("digits")`."""

        def deco(obj: T) -> T:
            return self.register(name, obj, doc)

        return deco

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The entry of `name`; an unknown name is a LookupError that says where names come
        from (a worker without the plug-in that registers it fails with this line)."""
        if name not in self._entries:
            raise LookupError(
                f"{self.kind} {name!r} is not registered in this process ({self.names()});"
                " if a plug-in provides it, name the plug-in in the scenario's `plugins`"
            )
        return self._entries[name]

    def check(self, name: str) -> str:
        """`name` if registered, else a ValueError listing what is (a pydantic validator)."""
        if name not in self._entries:
            raise ValueError(f"{name!r} is not one of {self.names()}")
        return name

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())


def first_line(obj: Any) -> str:
    """The first line of an object's docstring ("" without one): a registered entry's doc."""
    return ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]


def strict(options: Any, what: str) -> Any:
    """A plug-in's options model (a pydantic BaseModel class) that refuses unknown keys and
    non-finite numbers, so a misspelt key is an error, not a default silently used."""
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise RegistrationError(f"{what}: options must be a pydantic BaseModel class")
    config = options.model_config
    if config.get("extra") == "forbid" and config.get("allow_inf_nan") is False:
        return options
    settings = ConfigDict(**{**config, "extra": "forbid", "allow_inf_nan": False})
    body = {"model_config": settings, "__doc__": options.__doc__}
    return type(options.__name__, (options,), body)


@contextmanager
def registering_for(plugin: str) -> Iterator[None]:
    """Mark what is registered inside the block as the plug-in's."""
    global _origin
    before, _origin = _origin, plugin
    try:
        yield
    finally:
        _origin = before


def load_ref(ref: str) -> Any:
    """The object a "module:attribute" reference names (as Flower names app components)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_builtins() -> None:
    """Import fedsim's own method and privacy packages so their registrations run
    (idempotent)."""
    for module in BUILTINS:
        importlib.import_module(module)
