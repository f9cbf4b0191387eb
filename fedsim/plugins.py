"""Plug-ins: a user's own models, datasets and methods, imported by every process of a run.

A scenario names them in `plugins = [...]` (or `--plugin`, or `plugins=` in Python): an
installed module by its name, or a `.py` file or package folder by its path, relative to
the scenario file. Installed packages can also declare themselves in the entry-point group
`fedsim.plugins`, loaded wherever fedsim reads a scenario.

A file or folder travels with the run: loading the scenario turns its reference into a
`Plugin` holding its source and their sha256, and that is what the run directory's
config.toml, the ServerApp, every Ray worker and every SuperNode's ClientApp receive. A
process imports it from its original path when the files there still have that hash, else
from a copy written under the cache directory; so nothing is installed on workers. An
installed module must be installed where the run goes; where it is not, the process that
cannot import it stops the run with one line naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import keyword
import os
import shutil
import sys
import tempfile
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedsim.registry import RegistrationError, load_builtins, registering_for

ENTRY_POINTS = "fedsim.plugins"
HASH_ATTR = "__fedsim_plugin_sha256__"  # set on a module imported from a plug-in's files


class PluginError(ValueError):
    """A plug-in that cannot be found, imported or registered: one line (`plugins: ...`),
    and where its import raised, that traceback in `details`."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class Plugin(BaseModel):
    """One plug-in as a run carries it: the module it is imported as and, for a file or
    folder, where it was found, its source files and their hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    module: str = Field(description="the module name it is imported as")
    path: str | None = Field(
        None, description="the file or folder it was read from (unset: an installed module)"
    )
    sha256: str | None = Field(None, description="hash of `files`, checked before they run")
    files: dict[str, str] | None = Field(
        None, description="its source files (relative path -> text): a file or folder travels"
    )


# ---------------------------------------------------------------- references -> Plugins


def resolve(refs: list[Any], base: Path) -> list[Plugin]:
    """Plugins for a scenario's `plugins` list: strings are module names or paths relative
    to `base`; tables are plug-ins already resolved (a run directory's config.toml)."""
    if not isinstance(refs, list):
        raise PluginError(f"plugins: {refs!r} is not a list of module names or paths")
    out = []
    for ref in refs:
        if isinstance(ref, dict):
            out.append(Plugin.model_validate(ref))
        elif isinstance(ref, str) and ref.strip():
            out.append(_resolve_one(ref.strip(), base))
        else:
            raise PluginError(f"plugins: {ref!r} is not a module name or a path")
    return out


def unique(plugins: list[Plugin]) -> list[Plugin]:
    """The plug-ins, each module once (the same one twice is kept once; two different
    plug-ins of one module name are refused)."""
    out: dict[str, Plugin] = {}
    for p in plugins:
        if p.module in out and out[p.module] != p:
            raise PluginError(f"plugins: two different plug-ins are named {p.module!r}")
        out[p.module] = p
    return list(out.values())


def _resolve_one(ref: str, base: Path) -> Plugin:
    path = (base / ref).expanduser()
    if path.exists() or ref.endswith(".py") or "/" in ref or ref.startswith("."):
        if not path.exists():
            raise PluginError(f"plugins: {ref!r} is not a file or folder (looked in {base})")
        return from_path(path.resolve())
    if not ref.replace(".", "_").isidentifier():
        raise PluginError(f"plugins: {ref!r} is not a module name, a .py file or a folder")
    try:
        found = importlib.util.find_spec(ref)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise PluginError(
            f"plugins: {ref!r} is not an installed module, nor a file or folder in {base}"
        )
    return Plugin(module=ref)


def from_path(path: Path) -> Plugin:
    """A `.py` file or a package folder (with `__init__.py`) as a plug-in that travels."""
    module = path.stem if path.is_file() else path.name
    if path.is_file() and path.suffix != ".py":
        raise PluginError(f"plugins: {str(path)!r} is not a .py file or a package folder")
    if path.is_dir() and not (path / "__init__.py").is_file():
        raise PluginError(f"plugins: {str(path)!r} is a folder without __init__.py")
    if not module.isidentifier() or keyword.iskeyword(module):
        raise PluginError(f"plugins: {str(path)!r}: {module!r} is not a Python module name")
    files = source_files(path)
    return Plugin(module=module, path=str(path), sha256=digest(files), files=files)


def source_files(path: Path) -> dict[str, str]:
    """The plug-in's Python sources by path relative to its parent folder."""
    if path.is_file():
        return {path.name: path.read_text(encoding="utf-8")}
    found = sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts and p.is_file())
    return {str(p.relative_to(path.parent)): p.read_text(encoding="utf-8") for p in found}


def digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- importing


def activate(plugins: list[Plugin], where: str = "") -> None:
    """Import fedsim's own packages, the installed `fedsim.plugins` entry points and then
    these plug-ins (each once per process); `where` names this process's node in errors."""
    load_builtins()
    load_entry_points()
    for plugin in plugins:
        _activate_one(plugin, where)


def load_entry_points() -> None:
    """Import every installed package's `fedsim.plugins` entry point (once)."""
    for ep in entry_points(group=ENTRY_POINTS):
        module = ep.value.partition(":")[0]
        if module not in sys.modules:
            _import(Plugin(module=module), "", None)


def _activate_one(plugin: Plugin, where: str) -> None:
    loaded = sys.modules.get(plugin.module)
    if plugin.files is None:
        if loaded is None:
            _import(plugin, where, None)
        return
    if digest(plugin.files) != plugin.sha256:
        raise PluginError(f"plugins: {plugin.module!r}: its files do not match their sha256")
    if loaded is not None and hasattr(loaded, HASH_ATTR):
        if getattr(loaded, HASH_ATTR) != plugin.sha256:
            raise PluginError(
                f"plugins: {plugin.module!r} changed since this process imported it: start a"
                " new process (a notebook: restart its kernel) to run the new version"
            )
        return
    if loaded is not None:
        raise PluginError(
            f"plugins: {plugin.module!r} clashes with a module of that name already imported"
            f" here ({getattr(loaded, '__file__', None)}): rename the plug-in"
        )
    root = _root(plugin)
    found = _importable_as(plugin.module)
    ours = {  # where it is imported from, or where it was found (since edited)
        (folder / name).resolve()
        for folder in (root, *([Path(plugin.path).parent] if plugin.path else []))
        for name in (f"{plugin.module}.py", f"{plugin.module}/__init__.py")
    }
    if found is not None and found not in ours:
        raise PluginError(
            f"plugins: {plugin.module!r} clashes with the installed module of that name"
            f" ({found}): rename the plug-in"
        )
    _import(plugin, where, root)


def _importable_as(module: str) -> Path | None:
    """The file `import module` would load here (None: nothing of that name)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return None if spec is None else Path(spec.origin or module).resolve()


def _root(plugin: Plugin) -> Path:
    """The folder to import the plug-in's files from: where they were found, if they are
    unchanged there, else a copy in the cache directory."""
    if plugin.path:
        origin = Path(plugin.path)
        if origin.exists() and digest(source_files(origin)) == plugin.sha256:
            return origin.parent
    from fedsim.data.cache import cache_dir

    root = cache_dir() / "plugins" / str(plugin.sha256)[:32]
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent))
        for rel, text in (plugin.files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")
        try:
            os.rename(tmp, root)
        except OSError:  # another process wrote the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _import(plugin: Plugin, where: str, root: Path | None) -> ModuleType:
    """Import the plug-in (from `root`, or as an installed module), its registrations
    marked as its own; any failure is a PluginError."""
    at = f" on {where}" if where else ""
    try:
        with registering_for(plugin.module):
            if root is None:
                return importlib.import_module(plugin.module)
            return _exec_files(plugin, root)
    except RegistrationError as e:
        raise PluginError(f"plugins: {plugin.module!r}{at}: {e}", traceback.format_exc()) from None
    except ModuleNotFoundError as e:
        if root is None and e.name and plugin.module.startswith(e.name):
            raise PluginError(
                f"plugins: {plugin.module!r} is not installed{at}"
                " (install it there, or give the plug-in as a file or folder, which travels)"
            ) from None
        raise PluginError(
            f"plugins: {plugin.module!r} raised{at} on import: {type(e).__name__}: {e}",
            traceback.format_exc(),
        ) from None
    except Exception as e:
        raise PluginError(
            f"plugins: {plugin.module!r} raised{at} on import: {type(e).__name__}: {e}",
            traceback.format_exc(),
        ) from None


def _exec_files(plugin: Plugin, root: Path) -> ModuleType:
    name = plugin.module
    package = root / name / "__init__.py"
    if package.is_file():
        spec = importlib.util.spec_from_file_location(
            name, package, submodule_search_locations=[str(root / name)]
        )
    else:
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    setattr(module, HASH_ATTR, plugin.sha256)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        raise
    return module
