"""The `deployment` runtime: fedsim's Flower App submitted to a running SuperLink.

`flwr run APP FEDERATION --run-config FILE --stream` with the resolved scenario as
`scenario-json`, the run directory as an absolute `out-dir` and `resume`. The
ServerApp runs next to the SuperLink and writes the run directory there, so on one
machine (`fedsim deploy up`) the directory is the same as with the other runtimes.
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
    scenario: Scenario, out_dir: Path | str, resume: bool, federation: str | None
) -> None:
    from fedsim.deploy import CONNECTION, DeployError, flwr_run

    from . import run_config

    out = Path(out_dir).resolve()
    cfg = run_config(scenario, out, resume)
    code = flwr_run(cfg, federation or CONNECTION, flwr_home())
    if code != 0:
        raise DeployError(f"flwr run exited with code {code}")
    if not (out / SUMMARY).is_file():
        raise DeployError(
            f"the run finished without {out / SUMMARY}: see the SuperLink's log "
            "(the ServerApp writes the run directory on the SuperLink's machine)"
        )
