"""Every scenario and sweep file the repository ships loads and validates, every sweep point
included, from the repository root as the README runs them (the three Hub scenarios need
network: tests/test_hf_data.py runs them on local copies and checks their refusal here)."""

from __future__ import annotations

import pytest

from fedsim.config import load_scenario
from fedsim.sweeps import plan, read_sweep

from .conftest import REPO

HUB = {"cifar10_dirichlet.toml", "femnist_natural.toml", "shakespeare_natural.toml"}
FILES = sorted(
    p.relative_to(REPO / "scenarios").as_posix()
    for p in (REPO / "scenarios").rglob("*.toml")
    if p.name not in HUB
)


def is_sweep(text: str) -> bool:
    return any(line.replace(" ", "").startswith("base=") for line in text.splitlines())


def test_the_shipped_files_are_found():
    assert "quickstart.toml" in FILES and "sst2_fedavg.toml" in FILES
    assert sum(is_sweep((REPO / "scenarios" / f).read_text()) for f in FILES) >= 10


@pytest.mark.parametrize("name", FILES)
def test_a_shipped_scenario_or_sweep_validates(name, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths such as ../shared/data are relative to it
    path = REPO / "scenarios" / name
    if is_sweep(path.read_text()):
        runs = plan(*read_sweep(path))  # every point and seed, validated
        assert runs and all(r.scenario.rounds >= 1 for r in runs)
    else:
        assert load_scenario(path).rounds >= 1
