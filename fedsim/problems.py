"""The problems whose x*, L_i and mu_i fedsim knows: bias-free binary logistic regression on
data held in memory (the convex checks of ProxSkip and GradSkip, and their theory settings)."""

from __future__ import annotations

import numpy as np

from fedsim.config import Scenario
from fedsim.data import Dataset, load_dataset, partition_indices
from fedsim.data.logreg import logreg_constants, logreg_optimum


def convex_problem(scenario: Scenario) -> tuple[Dataset, list[np.ndarray], float] | None:
    """(data, client splits, l2 added to every client) when the scenario is bias-free binary
    logistic regression on data held in memory, the problems fedsim knows x*, L and mu of."""
    m, cfg = scenario.model, scenario.data
    ds = load_dataset(cfg, scenario.seed)
    if m.name != "logreg" or m.bias or ds.num_classes != 2 or ds.client is not None:
        return None
    return ds, partition_indices(cfg, scenario.seed), cfg.l2


def client_constants(scenario: Scenario) -> tuple[list[float], list[float]] | None:
    """Each client's smoothness L_i and strong convexity mu_i, for a convex problem."""
    problem = convex_problem(scenario)
    return None if problem is None else logreg_constants(*problem)


def known_optimum(scenario: Scenario) -> np.ndarray | None:
    """x* of (1/n) sum_i f_i (+ an l2 consensus regularizer) by Newton's method, for a
    convex problem (none for l1-regularised runs)."""
    problem, reg = convex_problem(scenario), getattr(scenario.algorithm, "regularizer", "none")
    if problem is None or reg == "l1":
        return None
    ds, splits, l2 = problem
    extra = l2 + (scenario.algorithm.reg if reg == "l2" else 0.0)
    try:
        return logreg_optimum(ds, splits, extra).astype(np.float64)
    except np.linalg.LinAlgError:  # flat directions without l2: no unique x*, no distance
        return None
