"""Privacy accounting with Opacus's accountants, and calibrating sigma to a target epsilon.

Every mechanism here is a composition of subsampled Gaussian mechanisms: (sigma, sample
rate q, number of steps). Opacus's RDP (default) or PRV accountant turns that into epsilon
at the scenario's delta; `get_noise_multiplier` inverts it for a target epsilon.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

# Opacus is imported by the functions that account (see mechanisms.py: ~1.5 s per process).
MAX_SIGMA = 1e6  # opacus.accountants.utils.MAX_SIGMA: the largest sigma its search tries


@lru_cache(maxsize=65536)
def epsilon(accountant: str, sigma: float, q: float, steps: int, delta: float) -> float:
    """epsilon after `steps` subsampled Gaussian steps (0 before any, inf without noise)."""
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    from opacus.accountants import create_accountant
    from opacus.accountants.analysis import rdp

    acc = create_accountant(accountant)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        try:
            if accountant == "rdp":  # Opacus's RDPAccountant.get_epsilon, one step's RDP cached
                orders = acc.DEFAULT_ALPHAS
                eps, _ = rdp.get_privacy_spent(
                    orders=orders, rdp=rdp_of_one_step(q, sigma) * steps, delta=delta
                )
                return float(eps)
            acc.history = [(sigma, q, steps)]
            return float(acc.get_epsilon(delta))
        except (ZeroDivisionError, OverflowError):  # sigma so small that sigma^2 underflows
            return math.inf


@lru_cache(maxsize=4096)
def rdp_of_one_step(q: float, sigma: float):
    """RDP of one subsampled Gaussian step at Opacus's default orders: steps compose by
    multiplication, exactly as Opacus computes them, so each client's (q, sigma) is
    evaluated once per process, not once per round (~0.17 s each)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    return rdp.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )


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
