"""Privacy accounting with Opacus's accountants, and calibrating sigma to a target epsilon.

Every mechanism here is a composition of subsampled Gaussian mechanisms: (sigma, sample
rate q, number of steps). Opacus's RDP (default) or PRV accountant turns that into epsilon
at the scenario's delta; `get_noise_multiplier` inverts it for a target epsilon.
"""

from __future__ import annotations

import math
import warnings

# Opacus is imported by the functions that account (see mechanisms.py: ~1.5 s per process).
MAX_SIGMA = 1e6  # opacus.accountants.utils.MAX_SIGMA: the largest sigma its search tries


def epsilon(accountant: str, sigma: float, q: float, steps: int, delta: float) -> float:
    """epsilon after `steps` subsampled Gaussian steps (0 before any, inf without noise)."""
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            return float(acc.get_epsilon(delta))
        except (ZeroDivisionError, OverflowError):  # sigma so small that sigma^2 underflows
            return math.inf


def calibrate(accountant: str, target: float, q: float, steps: int, delta: float) -> float:
    """The smallest sigma (within Opacus's 1% tolerance) giving epsilon <= target.

    epsilon falls as sigma grows, so a target above epsilon at Opacus's largest sigma is
    refused after one evaluation rather than after its whole doubling search."""
    if epsilon(accountant, MAX_SIGMA, q, steps, delta) > target:
        raise ValueError(f"epsilon {target} is below what sigma {MAX_SIGMA:g} reaches")
    from opacus.accountants.utils import get_noise_multiplier

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
