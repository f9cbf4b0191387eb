"""The model, the synthetic data of each partition (seeded by partition id), train and test."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FEATURES, HIDDEN, CLASSES = 16, 32, 4


class Net(nn.Module):
    """A two-layer MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def initial_model(seed: int) -> Net:
    """The global model at round 0, the same for any runtime (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Net()


def load_data(partition_id: int, samples: int, seed: int):
    """(x_train, y_train, x_val, y_val) of one partition: a shared teacher labels features
    drawn around a partition-specific mean (non-IID), 80/20 split."""
    teacher = np.random.default_rng(seed).standard_normal((FEATURES, CLASSES))
    rng = np.random.default_rng([seed, partition_id])
    x = rng.standard_normal((samples, FEATURES)) + 0.5 * rng.standard_normal(FEATURES)
    y = np.argmax(x @ teacher + 0.3 * rng.standard_normal((samples, CLASSES)), axis=1)
    x_t, y_t = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    cut = int(0.8 * samples)
    return x_t[:cut], y_t[:cut], x_t[cut:], y_t[cut:]


def train(net: Net, x, y, epochs: int, lr: float, batch_size: int, seed: int) -> float:
    """Local SGD; batches shuffled by a generator of `seed`. Returns the mean batch loss."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
    return total / max(steps, 1)


def test(net: Net, x, y) -> tuple[float, float]:
    """(loss, accuracy) on (x, y)."""
    net.eval()
    with torch.no_grad():
        out = net(x)
        loss = nn.functional.cross_entropy(out, y).item()
        acc = (out.argmax(dim=1) == y).float().mean().item()
    return loss, acc
