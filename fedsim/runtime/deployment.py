"""The `deployment` runtime: fedsim's Flower App submitted to a running SuperLink.

`flwr run APP FEDERATION --run-config FILE --stream` with the resolved scenario as
`scenario-json`, the run directory as an absolute `out-dir`, `resume` and
`return-outputs`. The ServerApp runs next to the SuperLink and writes the run directory
there; at the end it sends the directory back through the run's log (outputs.py), so the
submitting machine has it as with the other runtimes, wherever the SuperLink is.
FLWR_HOME is the environment's, else the local deployment's (`.deploy/flwr_home`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from fedsim.config import Scenario

SUMMARY = "summary.json"


def flwr_home() -> Path:
    from fedsim.deploy import DEFAULT_ROOT, Layout

    env = os.environ.get("FLWR_HOME")
    return Path(env) if env else Layout(DEFAULT_ROOT).flwr_home


def check_connection(federation: str | None) -> None:
    """The SuperLink connection exists in FLWR_HOME's config (checked before a run
    directory is made); a ValueError naming what is missing otherwise."""
    from fedsim.deploy import CONNECTION

    name, path = federation or CONNECTION, flwr_home() / "config.toml"
    try:
        known = tomllib.loads(path.read_text()).get("superlink", {})
    except (OSError, tomllib.TOMLDecodeError):
        known = {}
    if name not in known:
        raise ValueError(
            f"runtime: 'deployment' needs the SuperLink connection {name!r} in {path} (start"
            " one with `fedsim deploy up`, or pass --federation NAME with FLWR_HOME set)"
        )


def launch_deployment(
    scenario: Scenario,
    out_dir: Path | str,
    resume: bool,
    federation: str | None,
    server_dir: Path | str | None = None,
) -> None:
    """Submit the run and write its directory to `out_dir` as it comes back. The ServerApp
    writes `server_dir` on the SuperLink's machine (default: the same path as `out_dir`,
    which on one machine or a shared filesystem is the same directory, so resume works)."""
    from fedsim.deploy import CONNECTION, DeployError, flwr_run

    from . import outputs, run_config

    out = Path(out_dir).resolve()
    cfg = {**run_config(scenario, server_dir or out, resume), "return-outputs": True}
    received = outputs.Receiver()
    code = flwr_run(cfg, federation or CONNECTION, flwr_home(), lines=received.feed)
    try:
        received.write_to(out)
    except ValueError as e:
        raise DeployError(f"{e}: see the SuperLink's log") from None
    if code != 0:
        raise DeployError(f"flwr run exited with code {code}")
    if not (out / SUMMARY).is_file():
        raise DeployError(f"the run finished without {out / SUMMARY}: see {out}")
