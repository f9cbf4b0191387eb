"""Label-leakage attacks on what a backbone host sees (docs/algorithms.md section 7): each turns
per-sample activations or gradients into a score, and the leak of a score is
max(AUC, 1 - AUC) against the binary labels (0.5: nothing leaks, 1: everything)."""

from __future__ import annotations

from itertools import permutations

import numpy as np
from sklearn.cluster import KMeans
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


def kmeans_accuracy(v: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Accuracy of k-means clusters (k = number of classes) under the best label permutation."""
    classes = np.unique(labels)
    found = KMeans(len(classes), n_init=10, random_state=seed).fit_predict(v.reshape(len(v), -1))
    return max(float(np.mean(np.array(perm)[found] == labels)) for perm in permutations(classes))
