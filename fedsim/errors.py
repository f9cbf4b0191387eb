"""What fedsim raises to its callers, and the runtimes it offers, in a module that imports
nothing: the CLI answers `--help` and refuses bad input without loading torch, flwr or the
report stack (fedsim/cli.py). fedsim.config and fedsim.results re-export the exceptions."""

from __future__ import annotations

RUNTIMES = ("inprocess", "simulation", "deployment")


class ScenarioError(ValueError):
    """A scenario that cannot run; the message is one line: key, value, what is allowed.
    `details` holds what explains it further (a plug-in's traceback), shown before it."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class RunFailed(RuntimeError):
    """A run that stopped before its end: a client raised, or the ServerApp did."""
