"""fedsim: federated and split learning simulation on Flower.

`fedsim.run`, `fedsim.resume` and `fedsim.sweep` are the Python API (fedsim/api.py). It is
imported on first use, so a process that needs one submodule (a SuperNode) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["RunFailed", "RunResult", "ScenarioError", "SweepResult", "resume", "run", "sweep"]

if TYPE_CHECKING:
    from fedsim.api import RunFailed, RunResult, ScenarioError, SweepResult, resume, run, sweep


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    return getattr(importlib.import_module("fedsim.api"), name)
