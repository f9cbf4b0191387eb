"""Imports point one way: the core imports none of the plugin packages, methods and privacy
import only the core, and the two halves of the adapter never import each other. Checked on
every import statement, including those inside functions."""

from __future__ import annotations

import ast

from .conftest import REPO

PACKAGES = {  # folder -> the package it installs as
    "fedsim": "fedsim",
    "methods": "fedsim.methods",
    "privacy": "fedsim.privacy",
    "clients": "fedsim.clients",
    "servers": "fedsim.servers",
}
PLUGINS = ("fedsim.methods", "fedsim.privacy", "fedsim.clients", "fedsim.servers")
ALLOWED = {  # which plugin packages each may import
    "fedsim": set(),
    "fedsim.methods": set(),
    "fedsim.privacy": set(),
    "fedsim.clients": {"fedsim.methods", "fedsim.privacy"},
    "fedsim.servers": {"fedsim.methods", "fedsim.privacy"},
}


def imports(path) -> set[str]:
    """Absolute module names a file imports (relative imports stay inside its package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def plugin_of(module: str) -> str | None:
    return next((p for p in PLUGINS if module == p or module.startswith(p + ".")), None)


def test_imports_point_one_way():
    wrong = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            for module in imports(path):
                target = plugin_of(module)
                if target and target != package and target not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []
