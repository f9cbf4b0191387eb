"""The manual: it builds with no warning, its links resolve, every command of getting
started and the tutorials runs as the page shows it, and its figures and versions agree
with the code and benchmarks/results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import REPO
from .doc_commands import read_page

BIN = Path(sys.executable).parent
DOCS = REPO / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
# Shown but not run here: the two pip commands install into the reader's own environment
# (`make test-latest` installs from the same ranges, in a venv of its own).
NOT_RUN = {
    "pip install torch": "the reader's environment",
    'pip install ".[minilm,tensorboard]"': "the reader's environment",
}


def run_page(page_path: Path, cwd: Path, section: str | None = None) -> list[str]:
    """Write the page's files into cwd and run its commands there; return those not run."""
    page = read_page(page_path, section)
    for name, content in page.files.items():
        (cwd / name).write_text(content)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    skipped = []
    for command, expected in page.steps:
        if command in NOT_RUN:
            skipped.append(command)
            continue
        res = subprocess.run(
            command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        if expected is None:
            assert res.returncode == 0, f"{page_path.name}: {command}\n{res.stdout}{res.stderr}"
        else:
            assert (res.stdout + res.stderr).rstrip("\n") == expected, command
    return skipped


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_every_tutorial_command_runs_as_shown(page, tmp_path):
    assert read_page(page).steps, f"{page.name} shows no command"
    assert run_page(page, tmp_path) == []


@pytest.mark.slow
def test_every_getting_started_command_runs_as_shown():
    skipped = run_page(DOCS / "getting-started.md", REPO)
    assert sorted(skipped) == sorted(NOT_RUN)  # every exemption is still on the page


@pytest.mark.slow
def test_the_deployment_tutorial_on_one_machine_runs_as_shown(tmp_path):
    """docs/deployment.md's loopback block, in a folder with the repository's scenarios and
    venv; the page's walkthrough across machines is run by tests/test_multihost.py."""
    (tmp_path / "scenarios").symlink_to(REPO / "scenarios")
    (tmp_path / ".venv").symlink_to(BIN.parent)
    try:
        assert run_page(DOCS / "deployment.md", tmp_path, "On one machine (loopback)") == []
    finally:  # the page's own `deploy down` is skipped when a step before it fails
        subprocess.run([str(BIN / "fedsim"), "deploy", "down"], cwd=tmp_path, timeout=120)
    summary = json.loads((tmp_path / "runs" / "deployed" / "summary.json").read_text())
    assert summary["runtime"] == "deployment" and summary["rounds"] == 5


class Links(HTMLParser):
    """Every href/src of one HTML page, and every id it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


def anchors(pages: dict[Path, Links], target: Path) -> set[str]:
    """The ids an HTML page defines; none for a file that is not a page."""
    return (pages.get(target) or parse(target)).ids if target.suffix == ".html" else set()


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text())
    return links


@pytest.mark.slow
def test_site_builds_without_warnings_and_every_internal_link_resolves(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0 and "WARNING" not in res.stderr, res.stderr
    pages = {p: parse(p) for p in site.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            url = urlsplit(link)
            if url.scheme or url.netloc or link.startswith(("mailto:", "data:")):
                continue
            if url.path.startswith("/"):  # from the site's root (404.html, served anywhere)
                target = site / unquote(url.path).lstrip("/")
            else:
                target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif url.fragment and url.fragment not in anchors(pages, target):
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)
    reference = (site / "reference" / "scenario" / "index.html").read_text()
    assert "algorithm.client_lr" in reference or "client_lr" in reference


def test_benchmarks_page_shows_the_current_results():
    """Every `key` | value row of docs/benchmarks.md equals benchmarks/results/*.json."""
    results = {}
    for f in (REPO / "benchmarks" / "results").glob("*.json"):
        results.update(flatten(json.loads(f.read_text())))
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", (DOCS / "benchmarks.md").read_text(), re.M)
    assert len(rows) >= 20
    for key, value in rows:
        assert key in results, f"{key}: not in benchmarks/results"
        assert float(value) == pytest.approx(results[key], abs=5e-4), key


def flatten(d: dict) -> dict[str, float]:
    return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def test_readme_is_a_front_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not urlsplit(link).scheme:
            assert (REPO / link).exists(), link


def test_one_version_in_pyproject_package_and_changelog():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    import fedsim

    assert fedsim.__version__ == version
    top = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert top and top.group(1) == version
