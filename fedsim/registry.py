"""Named registries: how the core finds algorithms, datasets, models and codecs.

The core (`fedsim`) never imports `fedsim.methods`, `fedsim.privacy`, `fedsim.clients` or
`fedsim.servers` directly; `load_plugins()` imports the first two by name and they register
what they provide (methods; the privacy calibration). The apps are found by their Flower
component references (fedsim.runtime). `fedsim list` prints every registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

PLUGINS = ("fedsim.methods", "fedsim.privacy")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered item: its name, a one-line description, and the object."""

    name: str
    doc: str
    obj: T


class Registry(Generic[T]):
    """A name -> object table with a description per entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, doc: str = "") -> T:
        if name in self._entries and self._entries[name].obj is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, doc or (getattr(obj, "__doc__", "") or "").strip(), obj)
        return obj

    def __call__(self, name: str, doc: str = "") -> Any:
        """Decorator form: `@DATASETS("digits")`."""

        def deco(obj: T) -> T:
            return self.register(name, obj, doc)

        return deco

    def get(self, name: str) -> T:
        return self._entries[name].obj

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


def load_ref(ref: str) -> Any:
    """The object a "module:attribute" reference names (as Flower names app components)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_plugins() -> None:
    """Import the plugin packages so their registrations run (idempotent)."""
    for module in PLUGINS:
        importlib.import_module(module)
