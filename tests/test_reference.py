"""The scenario reference (`fedsim list --keys`, the docs' reference/scenario.md) against the
schema, walked here on its own through pydantic's JSON schema: every key the schema accepts is
on the page and nothing else, every key has a description, every method's, dataset's and
model's keys appear, and the CLI prints the very page."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from fedsim.cli import main
from fedsim.config import Scenario
from fedsim.data import DATASETS
from fedsim.method import METHODS
from fedsim.models import MODELS
from fedsim.reference import scenario_reference
from fedsim.sweeps import SweepConfig

from .conftest import REPO

DEMO = REPO / "tests" / "plugins" / "demo_plugins"  # registers a method, a model, a dataset


@pytest.fixture
def page() -> str:
    """The page now (a test run before may have activated plug-ins in this process)."""
    return scenario_reference()


def schema_keys(model: type[BaseModel]) -> tuple[set[str], set[str], list[str]]:
    """(dotted keys, tables as `[a.b]` / `[[a]]`, keys without a description) of a model's
    JSON schema; a key that is only a table may be described by the table's docstring."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    keys, tables, undescribed = set(), set(), []

    def resolve(s: dict) -> dict:
        return defs[s["$ref"].rsplit("/", 1)[1]] if "$ref" in s else s

    def objects(s: dict, many: bool = False) -> list[tuple[dict, bool]]:
        s = resolve(s)
        if "properties" in s:
            return [(s, many)]
        if "items" in s:
            return objects(s["items"], True)
        return [o for sub in s.get("anyOf", []) for o in objects(sub, many)]

    def walk(obj: dict, prefix: str) -> None:
        for name, prop in obj["properties"].items():
            path = prefix + name
            members = [m for m in prop.get("anyOf", [prop]) if m != {"type": "null"}]
            subs = objects(prop)
            table_only = len(members) == 1 and len(subs) == 1 and not subs[0][1]
            if not table_only:
                keys.add(path)
            if not (prop.get("description") or (table_only and subs[0][0].get("description"))):
                undescribed.append(path)
            for sub, many in subs:
                tables.add(f"[[{path}]]" if many else f"[{path}]")
                walk(sub, path + ".")

    walk(schema, "")
    return keys, tables, undescribed


def part(page: str, title: str) -> dict[str, list[str]]:
    """The `###` sections under `## title`: heading -> the keys of its table's rows."""
    body = page.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    sections = {}
    for block in body.split("\n### ")[1:]:
        heading, _, text = block.partition("\n")
        sections[heading] = re.findall(r"^\| `([^`]+)` \|", text, re.M)
    return sections


def page_keys(page: str, title: str) -> tuple[set[str], set[str]]:
    """(dotted keys, tables) a part of the page lists."""
    keys, tables = set(), set()
    for heading, rows in part(page, title).items():
        paths = re.findall(r"`(\[[^`]+\])`", heading)
        tables.update(paths)
        paths = paths or [""]  # the top level
        for path in paths:
            keys.update(f"{path.strip('[]')}.{r}".lstrip(".") for r in rows)
    return keys, tables


@pytest.mark.parametrize(
    ("model", "title", "some"),
    [
        (Scenario, "Scenario keys", {"seed", "data.alpha", "system.speed.median", "plugins.path"}),
        (SweepConfig, "Sweep files", {"base", "axes.keys", "target.metric", "tracking.backends"}),
    ],
)
def test_the_page_lists_every_key_and_table_the_schema_accepts(page, model, title, some):
    keys, tables, _ = schema_keys(model)
    assert some <= keys
    assert page_keys(page, title) == (keys, tables)


def test_every_key_of_the_schema_and_the_registries_has_a_description():
    models = [Scenario, SweepConfig, *(e.obj.params for e in METHODS if not e.origin)]
    models += [e.obj.options for registry in (DATASETS, MODELS) for e in registry if not e.origin]
    undescribed = [f"{m.__name__}.{k}" for m in models for k in schema_keys(m)[2]]
    assert undescribed == []


def test_a_key_without_a_description_is_caught():
    class Table(BaseModel):
        """A table."""

        x: int = Field(1, description="described")
        y: int = 2

    class Top(BaseModel):
        inner: Table
        z: float = Field(0.0, description="described")

    assert schema_keys(Top) == ({"inner.x", "inner.y", "z"}, {"[inner]"}, ["inner.y"])


def test_every_row_of_the_page_has_a_description():
    """fedsim's own page, made in a fresh process: a plug-in another test registered here
    need not describe its keys."""
    code = "from fedsim.reference import scenario_reference; print(scenario_reference(), end='')"
    page = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    rows = [r for r in page.splitlines() if r.startswith("| `")]
    assert rows
    assert [r for r in rows if r.rstrip().endswith("|  |")] == []


def test_every_method_dataset_and_model_has_its_keys_on_the_page(page):
    common = part(page, "Scenario keys")["`[algorithm]`"]
    methods = part(page, "Methods")
    for e in METHODS:
        own = set(methods[f"`{e.name}`"])
        assert own <= set(e.obj.params.model_fields) - {"name"}, e.name
        assert own | set(common) == set(e.obj.params.model_fields), e.name
    for title, registry in (("Datasets", DATASETS), ("Models", MODELS)):
        sections = part(page, title)
        for e in registry:
            assert sections[f"`{e.name}`"] == list(e.obj.options.model_fields), e.name


def test_refusals_come_from_supports(page):
    split = page.split("### `split_lora`", 1)[1].split("\n### ", 1)[0]
    assert '`privacy.mechanism` = `"dp_sgd"`, `"dp_fedavg"`, `"local"`' in split
    assert '`execution` = `"vectorized"`' in split
    fedavg = page.split("### `fedavg`", 1)[1].split("\n### ", 1)[0]
    assert "`system.policy`" not in fedavg and "privacy.mechanism" not in fedavg


def test_list_keys_prints_the_reference_and_it_is_deterministic(page, capsys):
    assert main(["list", "--keys"]) == 0
    assert capsys.readouterr().out == scenario_reference() == page


def test_a_plugins_entries_are_listed_and_marked():
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "list", "--keys", "--plugin", str(DEMO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "(plug-in `demo_plugins`)" in done.stdout
    assert "### `fedavgm`" in done.stdout and "### `wine`" in done.stdout
