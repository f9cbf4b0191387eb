"""Every scenario and sweep file the repository ships loads and validates, every sweep point
included, from the repository root as the README runs them (the three Hub scenarios need
network: tests/test_hf_data.py runs them on local copies and checks their refusal here)."""

from __future__ import annotations

import json
import subprocess
import sys

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


def write_sweep(sweep, rows, eps=None):
    """A sweep directory as `fedsim sweep` leaves it: sweep.csv and each run's summary."""
    lines = ["point,seed,algorithm.method,algorithm.hosts,algorithm.label_epsilon,status"]
    for point, seed, method, hosts, acc, leaks in rows:
        status = "ok" if leaks else "pending"
        lines.append(f"{point},{seed},{method},{hosts},{eps or ''},{status}")
        if not leaks:
            continue
        run = sweep / "points" / f"{point:03d}" / f"seed{seed}"
        run.mkdir(parents=True)
        summary = {"final": {"eval_accuracy": acc}, "leak": max(leaks.values()), **leaks}
        (run / "summary.json").write_text(json.dumps(summary))
    (sweep / "sweep.csv").write_text("\n".join(lines) + "\n")


P3EFT_LEAKS = {  # a run with the drift attack and the held-out measure
    "leak_update_spectral": 0.81,
    "leak_actdiff_probe": 0.6,
    "leak_drift_spectral": 0.8,
    "heldout_leak": 0.78,
}


def test_the_p3eft_table_averages_accuracy_and_takes_each_attacks_worst(tmp_path):
    write_sweep(  # point, seed, method, hosts: accuracy, worst leak, per-attack keys
        tmp_path / "a",
        [
            (0, 0, "vanilla", 1, 0.80, {"leak_grad_norm": 0.99, "leak_act_norm": 0.70}),
            (0, 1, "vanilla", 1, 0.90, {"leak_grad_norm": 0.95, "kmeans_act": 0.75}),
            (1, 0, "p3eft", 4, 0.85, P3EFT_LEAKS),
            (1, 1, "p3eft", 4, None, {}),  # still pending: left out
        ],
    )
    write_sweep(tmp_path / "b", [(0, 1, "p3eft", 4, 0.70, {"leak_update_spectral": 0.6})], eps=2.0)
    script = REPO / "scenarios" / "p3eft_table" / "table.py"
    out = subprocess.run(
        [sys.executable, script, tmp_path / "a", tmp_path / "b"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| vanilla | 85.0 / 99.0 | - |" in out  # mean accuracy, worst leak over seeds
    assert "| p3eft | - | 85.0 / 81.0 |" in out
    assert "| p3eft, label DP eps = 2 | - | 70.0 / 60.0 |" in out
    assert "| vanilla | 2-class, two-party | 0.990 | 0.750 | - | - | - | - | - |" in out
    assert "| p3eft | 2-class, multi-party | - | - | - | - | 0.600 | 0.810 | 0.800 |" in out
    assert "| p3eft | 2-class, multi-party | 0.810 | 0.780 | - |" in out  # train/held-out/floor
    assert "| vanilla | 2-class, two-party | 0.990 |" not in out.split("frozen floor |")[1]
    assert "| vanilla | 2-class, two-party | 80.0 / 0.990 | 90.0 / 0.950 |" in out  # by seed
    assert "| p3eft, label DP eps = 2 | 2-class, multi-party | - | 70.0 / 0.600 |" in out
