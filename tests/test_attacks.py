"""The leakage attacks on synthetic views whose label signal is known."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.privacy.attacks import (
    direction_attack,
    kmeans_accuracy,
    leak,
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
