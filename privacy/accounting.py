"""Privacy accounting with Opacus's accountants, and calibrating sigma to a target epsilon.

Every mechanism here is a composition of subsampled Gaussian mechanisms: (sigma, sample
rate q, number of steps). Opacus's RDP (default) or PRV accountant turns that into epsilon
at the scenario's delta; `get_noise_multiplier` inverts it for a target epsilon.
"""

from __future__ import annotations

import math
import warnings

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier


def epsilon(accountant: str, sigma: float, q: float, steps: int, delta: float) -> float:
    """epsilon after `steps` subsampled Gaussian steps (0 before any, inf without noise)."""
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    acc = create_accountant(accountant)
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            return float(acc.get_epsilon(delta))
        except (ZeroDivisionError, OverflowError):  # sigma so small that sigma^2 underflows
            return math.inf


def calibrate(accountant: str, target: float, q: float, steps: int, delta: float) -> float:
    """The smallest sigma (within Opacus's 1% tolerance) giving epsilon <= target."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=target,
                target_delta=delta,
                sample_rate=q,
                steps=steps,
                accountant=accountant,
            )
        )
