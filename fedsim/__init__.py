"""fedsim: federated and split learning simulation on Flower.

The Python API (fedsim/api.py): `fedsim.run`, `fedsim.resume`, `fedsim.sweep`, and
`fedsim.run_flower_app` for any Flower App (fedsim/flower_apps.py).
The extension API, for plug-ins (docs/extending.md): `register_model`, `register_dataset`,
`register_method`, and the method contract's types (`FederatedMethod`, `Params`,
`Supports`, `Downlink`, `Received`, `Upload`, `Aggregate`, `Oracle`) and `ArrayData`.
Names are imported on first use, so a process that needs one submodule (a SuperNode) stays
light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.1"

_FROM = {  # public name -> the module that defines it
    **dict.fromkeys(
        ["RunFailed", "RunResult", "ScenarioError", "SweepResult", "resume", "run", "sweep"],
        "fedsim.api",
    ),
    **dict.fromkeys(
        [
            "Aggregate",
            "Downlink",
            "FederatedMethod",
            "Oracle",
            "Params",
            "Received",
            "Supports",
            "Upload",
            "register_method",
        ],
        "fedsim.method",
    ),
    "register_model": "fedsim.models",
    "register_dataset": "fedsim.data.registration",
    "ArrayData": "fedsim.data.arrays",
    "FlowerRun": "fedsim.flower_apps",
    "run_flower_app": "fedsim.flower_apps",
}
__all__ = [
    "Aggregate",
    "ArrayData",
    "Downlink",
    "FederatedMethod",
    "FlowerRun",
    "Oracle",
    "Params",
    "Received",
    "RunFailed",
    "RunResult",
    "ScenarioError",
    "Supports",
    "SweepResult",
    "Upload",
    "register_dataset",
    "register_method",
    "register_model",
    "resume",
    "run",
    "run_flower_app",
    "sweep",
]

if TYPE_CHECKING:
    from fedsim.api import RunFailed, RunResult, ScenarioError, SweepResult, resume, run, sweep
    from fedsim.data.arrays import ArrayData
    from fedsim.data.registration import register_dataset
    from fedsim.flower_apps import FlowerRun, run_flower_app
    from fedsim.method import (
        Aggregate,
        Downlink,
        FederatedMethod,
        Oracle,
        Params,
        Received,
        Supports,
        Upload,
        register_method,
    )
    from fedsim.models import register_model


def __getattr__(name: str):
    if name not in _FROM:
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    return getattr(importlib.import_module(_FROM[name]), name)
