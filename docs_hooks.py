"""MkDocs hooks: the pages generated from the code at build time (the scenario keys, the
command line) and the changelog, so the manual cannot drift from what fedsim accepts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).parent


def cli_reference() -> str:
    """Every command's `--help`, as argparse prints it at 100 columns."""
    os.environ["COLUMNS"] = "100"
    from fedsim.cli import parser

    out = ["# Command line\n", "Generated from `fedsim.cli` at build time.\n"]

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        out.append(f"## `{name}`\n\n```text\n{p.format_help().rstrip()}\n```\n")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(child, f"{name} {sub}")

    walk(parser(), "fedsim")
    return "\n".join(out)


def scenario_reference() -> str:
    from fedsim.reference import scenario_reference

    return scenario_reference()


GENERATED = {
    "reference/scenario.md": scenario_reference,
    "reference/cli.md": cli_reference,
    "changelog.md": lambda: (ROOT / "CHANGELOG.md").read_text(),
}


def on_files(files: Files, config) -> Files:
    for uri, make in GENERATED.items():
        files.append(File.generated(config, uri, content=make()))
    return files
