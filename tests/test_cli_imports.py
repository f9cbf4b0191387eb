"""The CLI answers at once: `fedsim --help` and a scenario refused at load import neither
torch nor flwr nor the report stack (issue 40, part 8), and a refusal is still exit code 2
with one line. Each check runs in a fresh interpreter, where nothing is imported yet."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

HEAVY = ("torch", "flwr", "sklearn", "scipy", "matplotlib", "pandas", "plotly", "opacus")

# Runs the CLI in a fresh interpreter, then prints its exit code and the heavy packages loaded.
PROBE = """
import json, sys
from fedsim.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "loaded": sorted({m.split(".")[0] for m in sys.modules} & HEAVY)}))
"""


def probe(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    code = f"HEAVY = {set(HEAVY)!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done


def test_importing_the_cli_loads_nothing_heavy():
    code = f"HEAVY = {set(HEAVY)!r}\nimport sys, fedsim.cli\n"
    code += "print(sorted({m.split('.')[0] for m in sys.modules} & HEAVY))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_loads_no_torch():
    for args in (["--help"], ["run", "--help"], ["list", "--help"]):
        result, done = probe(*args)
        assert result == {"rc": 0, "loaded": []}, (args, done.stderr)
        assert "usage: fedsim" in done.stdout


def test_a_refused_scenario_exits_2_with_one_line_without_torch(tmp_path):
    result, done = probe("run", "scenarios/quickstart.toml", "--set", "seed=-1")
    assert result == {"rc": 2, "loaded": []}, done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedsim: error: scenario.seed: -1 is invalid (input should be greater than or equal to 0)"
    ]
    toml = tmp_path / "bad.toml"
    toml.write_text('rounds = -1\n[algorithm]\nname = "fedavg"\n')
    result, done = probe("run", str(toml), "--out", str(tmp_path / "never"))
    assert result == {"rc": 2, "loaded": []}, done.stderr
    assert done.stderr.strip().splitlines() == [
        "fedsim: error: scenario.rounds: -1 is invalid (input should be greater than or equal to 1)"
    ]
    assert not (tmp_path / "never").exists()


def test_the_console_script_refuses_with_exit_code_2():
    """The same refusal through `python -m fedsim`, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", "scenarios/quickstart.toml", "--set", "rounds=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fedsim: error: scenario.rounds: 0 is invalid (input should be greater than or equal to 1)"
    ]
