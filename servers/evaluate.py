"""Server-side evaluation of the global model on the held-out split (and distance to x*)."""

from __future__ import annotations

import numpy as np
import torch

from fedsim.config import Scenario
from fedsim.data import Dataset, load_dataset, partition_indices
from fedsim.data.logreg import logreg_constants, logreg_optimum
from fedsim.models import bind, build_model, loss_fn, predict


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


class Evaluator:
    """Loss and accuracy of a flat parameter vector on the test split."""

    def __init__(self, scenario: Scenario) -> None:
        ds = load_dataset(scenario.data, scenario.seed)
        dev = torch.device(scenario.device)
        self.model = build_model(scenario.model, ds.x_train.shape[1], ds.num_classes, scenario.seed)
        self.model.to(dev)
        self.x0 = torch.nn.utils.parameters_to_vector(self.model.parameters()).detach().cpu()
        self.inputs = torch.as_tensor(ds.x_test, device=dev)
        self.targets = torch.as_tensor(ds.y_test, device=dev)
        self.loss = loss_fn(ds.num_classes)
        self.device = dev
        self.optimum = known_optimum(scenario)
        if self.optimum is not None:
            self.dist0 = float(np.sum((self.x0.numpy().astype(np.float64) - self.optimum) ** 2))

    def initial_params(self) -> np.ndarray:
        return self.x0.numpy().copy()

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> dict[str, float]:
        bind(self.model, torch.as_tensor(np.array(x, dtype=np.float32), device=self.device))
        out = self.model(self.inputs)
        metrics = {
            "eval_loss": float(self.loss(out, self.targets)),
            "eval_accuracy": float((predict(out) == self.targets).float().mean()),
        }
        if self.optimum is not None:
            dist = float(np.sum((x.astype(np.float64) - self.optimum) ** 2))
            metrics["dist_to_opt"], metrics["rel_dist_to_opt"] = dist, dist / self.dist0
        return metrics
