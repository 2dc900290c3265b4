"""Paired comparisons of two models scored on the same cases: DeLong's test and the paired patient bootstrap.

DeLong's test is written here because neither scikit-learn nor scipy.stats has it (scipy 1.17 has no ROC/AUC
test at all; sklearn.metrics.roc_auc_score gives the AUC without a variance). This is the fast algorithm of
Sun & Xu (2014, IEEE Signal Processing Letters 21:1389): the structural components of DeLong, DeLong &
Clarke-Pearson (1988) computed from mid-ranks in O(n log n) instead of comparing every positive with every
negative; ties count one half, as in the Mann-Whitney AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import norm, rankdata


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(aucs (k,), V10 (k, m) positive placements, V01 (k, n) negative placements) for k score rows."""
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)  # mid-ranks among positives
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # mid-ranks among all
    aucs = (tz[:, :m].sum(1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n  # fraction of negatives below each positive (ties 1/2)
    v01 = 1 - (tz[:, m:] - ty) / m  # fraction of positives above each negative
    return aucs, v10, v01


def auroc(y, p) -> float | None:
    """Mann-Whitney AUROC from mid-ranks (equal to sklearn's roc_auc_score; None with one class only): the
    paired bootstrap calls it thousands of times, where roc_auc_score's input checks dominate."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    m = int(y.sum())
    n = len(y) - m
    if m == 0 or n == 0:
        return None
    return float((rankdata(p)[y == 1].sum() - m * (m + 1) / 2) / (m * n))


def delong_covariance(y, scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs, their covariance matrix) of several score vectors on the same binary labels y."""
    y = np.asarray(y, dtype=int)
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = s[:, y == 1], s[:, y == 0]
    if pos.shape[1] < 2 or neg.shape[1] < 2:
        raise ValueError("DeLong's test needs at least two positive and two negative cases")
    aucs, v10, v01 = _placements(pos, neg)
    cov = np.atleast_2d(np.cov(v10)) / pos.shape[1] + np.atleast_2d(np.cov(v01)) / neg.shape[1]
    return aucs, cov


def delong_test(y, p_a, p_b) -> tuple[float, float]:
    """(AUC_b - AUC_a, two-sided p-value) of DeLong's test for two correlated ROC curves."""
    aucs, cov = delong_covariance(y, [p_a, p_b])
    diff = float(aucs[1] - aucs[0])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # identical rankings: no difference to test
        return diff, 1.0
    return diff, float(2 * norm.sf(abs(diff) / np.sqrt(var)))


def paired_bootstrap(metric: Callable[[np.ndarray, np.ndarray], float | None], y: np.ndarray, p_a: np.ndarray,
                     p_b: np.ndarray, patients: Sequence[str], n: int = 2000, seed: int = 0,
                     level: float = 0.95, metric_b: Callable | None = None) -> dict:
    """Difference metric(b) - metric(a) with a percentile CI from resampling PATIENTS with replacement, the same
    draw for both models (that pairing is what makes the interval narrower than two separate CIs).
    p-value: two-sided from the bootstrap distribution of the difference,
    2 * min((1 + #{d <= 0}) / (1 + n), (1 + #{d >= 0}) / (1 + n)), capped at 1. Draws where the metric is undefined (one class only) are dropped. `metric_b` scores model b
    where it needs its own settings (each run's own threshold for threshold-dependent metrics)."""
    metric_b = metric_b or metric
    y, p_a, p_b = np.asarray(y), np.asarray(p_a), np.asarray(p_b)
    a, b = metric(y, p_a), metric_b(y, p_b)
    diff = None if a is None or b is None else float(b - a)
    uniq, inverse = np.unique(np.asarray(patients), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])
        ma, mb = metric(y[idx], p_a[idx]), metric_b(y[idx], p_b[idx])
        if ma is not None and mb is not None:
            draws.append(mb - ma)
    if diff is None or not draws:
        return {"diff": diff, "ci95": None, "p_value": None, "n_boot": len(draws)}
    d = np.asarray(draws)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    # (1 + count) / (1 + n): a bootstrap p-value is never 0; no draw across zero in 2000 means p < ~0.001, not
    # p = 0 (Davison & Hinkley 1997, section 4.4)
    n_d = len(d)
    p = min(1.0, 2 * min((1 + int((d <= 0).sum())) / (1 + n_d), (1 + int((d >= 0).sum())) / (1 + n_d)))
    return {"diff": diff, "ci95": [float(lo), float(hi)], "p_value": p, "n_boot": len(draws)}
