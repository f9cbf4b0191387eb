"""The leakage attacks on synthetic views whose label signal is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedsim.privacy.attacks import (
    direction_attack,
    drift_attack,
    kmeans_accuracy,
    leak,
    measured,
    norm_attack,
    spectral_attack,
)

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 400)


def test_leak_is_symmetric_and_half_for_noise():
    scores = RNG.normal(size=400)
    assert leak(scores, Y) == pytest.approx(leak(-scores, Y))
    assert 0.5 <= leak(scores, Y) < 0.6
    assert leak(Y + 0.0, Y) == 1.0 and leak(-Y + 0.0, Y) == 1.0


def test_each_attack_finds_the_label_where_it_shapes_the_view():
    noise = RNG.normal(size=(400, 16))
    scaled = noise * np.where(Y == 1, 3.0, 1.0)[:, None]  # positives have larger gradients
    assert leak(norm_attack(scaled), Y) > 0.9
    direction = np.where(Y == 1, 1.0, -1.0)[:, None] * np.ones(16) + 0.3 * noise
    positive = int(np.flatnonzero(Y == 1)[0])
    assert leak(direction_attack(direction, positive), Y) > 0.99
    shifted = noise + 4.0 * Y[:, None] * np.eye(16)[0]  # the classes differ along one axis
    assert leak(spectral_attack(shifted), Y) > 0.95
    assert kmeans_accuracy(shifted, Y) > 0.95
    assert leak(norm_attack(noise), Y) < 0.6  # and find nothing where there is nothing
    assert kmeans_accuracy(noise, Y) < 0.6


def test_drift_signs_its_guess_at_the_minority_class_without_labels():
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.25).astype(int)  # 25% positives, as the split-learning task
    residual = 2.0 * y[:, None] * rng.normal(size=16) + rng.normal(size=(400, 16))
    for sign in (1.0, -1.0):  # whichever way the component points, positives score high
        assert roc_auc_score(y, drift_attack(sign * residual)) > 0.9
    assert leak(drift_attack(np.zeros((400, 16))), y) == 0.5  # an adapter that adds nothing


def drift(v: np.ndarray, y: np.ndarray) -> float:
    return leak(drift_attack(v), y)


def test_the_held_out_measure_tells_a_learnt_task_from_memorised_labels():
    """Inputs whose label direction has a small variance, so that frozen features (the
    inputs themselves) hide it from the attack. A view that learnt the task scales that
    direction up and reads held-out inputs as well as training ones; a view that memorised
    labels the inputs do not predict reads the training examples only."""
    rng = np.random.default_rng(2)
    train, heldout = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    for x in (train, heldout):
        x[:, 0] *= 0.2
    task = (train[:, 0] > 0).astype(int), (heldout[:, 0] > 0).astype(int)
    learnt = np.r_[30.0, np.ones(15)]
    m = measured(drift, (train * learnt, task[0]), (heldout * learnt, task[1]), (train, task[0]))
    assert m["train"] > 0.95 and m["heldout"] > 0.95 and m["train"] - m["heldout"] < 0.03
    assert m["floor"] < 0.65

    noise = rng.integers(0, 2, 600), rng.integers(0, 2, 600)  # independent of the inputs
    memory = {row.tobytes(): label for row, label in zip(train, noise[0], strict=True)}

    def memorised(x: np.ndarray) -> np.ndarray:
        recalled = np.array([memory.get(row.tobytes(), 0.5) for row in x])  # unseen: no guess
        return x + 6.0 * recalled[:, None] * np.eye(16)[0]

    m = measured(
        drift, (memorised(train), noise[0]), (memorised(heldout), noise[1]), (train, noise[0])
    )
    assert m["train"] > 0.95 and m["heldout"] < 0.6 and m["floor"] < 0.6
