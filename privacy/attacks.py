"""Label-leakage attacks on what a backbone host sees (docs/algorithms.md section 7): each turns
per-sample activations or gradients into a score, and the leak of a score is
max(AUC, 1 - AUC) against the binary labels (0.5: nothing leaks, 1: everything). Besides
the per-message attacks, a host can combine its messages: the shards of one call (pairing,
span) and the activations of adapter weights it holds (differences between adapter sets,
between consecutive updates, the adapter's own contribution); servers/host_views.py runs
them on each host's view, each also on held-out inputs and on frozen features (`measured`)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import permutations
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def leak(scores: np.ndarray, labels: np.ndarray) -> float:
    """max(AUC, 1 - AUC): an attacker may flip its guess; with more than two classes, the
    worst over the one-vs-rest splits."""
    classes = np.unique(labels)
    if len(classes) < 2:
        return 0.5  # one class: nothing to tell apart
    if len(classes) > 2:
        return max(leak(scores, labels == c) for c in classes)
    auc = float(roc_auc_score(labels, scores))
    return max(auc, 1.0 - auc)


def norm_attack(v: np.ndarray) -> np.ndarray:
    """Per-sample l2 norm (of an activation or of the gradient a host receives)."""
    return np.linalg.norm(v.reshape(len(v), -1), axis=1)


def direction_attack(g: np.ndarray, known_positive: int) -> np.ndarray:
    """Cosine of each sample's gradient with that of one sample known to be positive."""
    flat = g.reshape(len(g), -1)
    ref = flat[known_positive]
    return flat @ ref / (np.linalg.norm(flat, axis=1) * np.linalg.norm(ref) + 1e-12)


def spectral_attack(h: np.ndarray) -> np.ndarray:
    """Projection of the centred activations on their top singular vector."""
    flat = h.reshape(len(h), -1)
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[0]


def drift_attack(v: np.ndarray, seed: int = 0) -> np.ndarray:
    """Spectral scores signed without labels: the larger of two k-means clusters of them is
    taken for the majority class and scores low, so a high score guesses the minority class
    (used on an adapter's contribution forward(x, theta) - forward(x, theta_0))."""
    scores = spectral_attack(v)
    if np.ptp(scores) == 0:  # the adapter adds nothing (B = 0): nothing to orient
        return scores
    found = KMeans(2, n_init=10, random_state=seed).fit_predict(scores[:, None])
    major = int(np.sum(found == 1) > np.sum(found == 0))
    if scores[found == major].mean() > scores[found != major].mean():
        scores = -scores
    return scores


def measured(
    attack: Callable[[Any, np.ndarray], float],
    train: tuple[Any, np.ndarray],
    heldout: tuple[Any, np.ndarray],
    floor: tuple[Any, np.ndarray],
) -> dict[str, float]:
    """One attack, (view, labels) -> leak, three ways: on the view of the training examples,
    on the same view of held-out inputs, and on frozen features of the training inputs. A
    train value above the held-out one is what the view tells of these examples' labels
    beyond what it predicts of any input; held-out above floor is the task it has learnt."""
    return {"train": attack(*train), "heldout": attack(*heldout), "floor": attack(*floor)}


def kmeans_accuracy(v: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy of k-means clusters (k = number of classes) under the best label permutation."""
    classes = np.unique(labels)
    found = KMeans(len(classes), n_init=10, random_state=seed).fit_predict(v.reshape(len(v), -1))
    return max(float(np.mean(np.array(perm)[found] == labels)) for perm in permutations(classes))


def probe_leak(v: np.ndarray, labels: np.ndarray, known: int = 20, seed: int = 0) -> float:
    """An attacker who knows `known` labels (an equal number per class, drawn at random):
    a logistic-regression probe fitted on them, its leak on every other example."""
    flat = v.reshape(len(v), -1)
    classes = np.unique(labels)
    if len(classes) < 2:
        return 0.5
    rng = np.random.default_rng(seed)
    per = max(1, known // len(classes))
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes])
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    if len(np.unique(labels[rest])) < 2:
        return 0.5
    scale = flat[picked].std(0).mean() + 1e-12
    probe = LogisticRegression(max_iter=1000).fit(flat[picked] / scale, labels[picked])
    proba = probe.predict_proba(flat[rest] / scale)
    if len(classes) == 2:
        return leak(proba[:, 1], labels[rest])
    return max(leak(proba[:, k], labels[rest] == c) for k, c in enumerate(probe.classes_))


def rank_one_fraction(v: np.ndarray) -> float:
    """sigma_1^2 / sum sigma^2 of the per-sample rows: near one when every sample's vector
    lies on one line, as a label-driven activation gradient does."""
    s = np.linalg.svd(v.reshape(len(v), -1), compute_uv=False)
    return float(s[0] ** 2 / max(float((s**2).sum()), 1e-30))


def span_attack(shards: np.ndarray, grid: int = 36) -> np.ndarray:
    """The combination of one call's m shards ([m, B, ...]) with the strongest label
    structure, found without labels: the minimum-norm unit combination (noise that cancels
    leaves g_h) and combinations on a grid of the unit sphere (random directions above three
    shards), keeping the one closest to rank one. Returns its [B, ...] rows."""
    m = len(shards)
    flat = shards.reshape(m, -1)
    u, _, _ = np.linalg.svd(flat @ flat.T)
    candidates = [u[:, -1]]  # the direction of the smallest singular value: minimum norm
    if m == 2:
        angles = np.linspace(0, np.pi, grid, endpoint=False)
        candidates += list(np.stack([np.cos(angles), np.sin(angles)], 1))
    else:
        rng = np.random.default_rng(0)
        d = rng.standard_normal((grid * (m - 1), m))
        candidates += list(d / np.linalg.norm(d, axis=1, keepdims=True))
    combos = [np.tensordot(c, shards, axes=1) for c in candidates]
    return max(combos, key=rank_one_fraction)


def oriented_spectral_attack(parts: list[np.ndarray]) -> np.ndarray:
    """Spectral scores over a sequence of batches whose label direction drifts slowly (e.g.
    one per training step): each batch centred and projected on its own top singular
    vector, the vector's sign chosen to agree with the previous batch's, each batch's
    scores scaled to unit norm, so that no step's scale dominates."""
    scores, previous = [], None
    for part in parts:
        centred = part.reshape(len(part), -1) - part.reshape(len(part), -1).mean(0)
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        if previous is not None and top @ previous < 0:
            top = -top
        previous = top
        s = centred @ top
        scores.append(s / (np.linalg.norm(s) + 1e-30))
    return np.concatenate(scores)
