"""A built wheel (not the editable install) imports and runs a scenario from outside the repo."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_built_wheel_installs_and_runs(tmp_path):
    # Ray (started by earlier tests in this process) may leave PYTHONPATH pointing at the repo
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, check=True, capture_output=True, text=True, env=env, **kw)

    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(REPO),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path / "dist"),
    )
    (wheel,) = (tmp_path / "dist").glob("fedsim_flwr-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    # dependencies come from the dev environment's site-packages, fedsim only from the wheel
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        str(venv / "bin/python"),
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--ignore-installed",
        "-q",
        str(wheel),
    )
    probe = (
        "import fedsim, fedsim.clients.app, fedsim.servers.app, fedsim.privacy; "
        "print(fedsim.__file__)"
    )
    where = run(str(venv / "bin/python"), "-c", probe, cwd=tmp_path).stdout
    assert str(venv) in where and str(REPO) not in where
    scenario = tmp_path / "s.toml"
    scenario.write_text('rounds = 1\n[data]\nnum_clients = 3\n[algorithm]\nname = "fedavg"\n')
    out = run(
        str(venv / "bin/fedsim"), "run", str(scenario), "--out", str(tmp_path / "run"), cwd=tmp_path
    ).stdout
    assert "eval_accuracy" in out and (tmp_path / "run/summary.json").is_file()
