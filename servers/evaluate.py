"""Server-side evaluation of the global model on the held-out split (and distance to x*)."""

from __future__ import annotations

import numpy as np
import torch

from fedsim.config import Scenario
from fedsim.data import load_dataset
from fedsim.models import bind, build_model, flat_params, loss_fn, predict
from fedsim.problems import known_optimum


class Evaluator:
    """Loss and accuracy of a flat model vector on the test split, in eval mode (BatchNorm
    normalises with the vector's running statistics; under `model.buffers = "local"` with the
    model's initial ones, as the server has none of its own)."""

    def __init__(self, scenario: Scenario) -> None:
        ds = load_dataset(scenario.data, scenario.seed)
        dev = torch.device(scenario.device)
        self.model = build_model(scenario.model, ds.x_train.shape[1], ds.num_classes, scenario.seed)
        self.model.to(dev).eval()
        self.x0 = flat_params(self.model).cpu()
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
