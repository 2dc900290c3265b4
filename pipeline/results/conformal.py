"""Uncertainty per case: the spread of the fold ensemble, split conformal prediction sets, and abstention.

Split conformal prediction (crepes' ConformalClassifier): the nonconformity of a class is 1 - its calibrated
probability; the pooled out-of-fold predictions are the calibration set (each scored by a model that never saw
it), and a test case's prediction set holds every class whose nonconformity is not larger than the
ceil((n + 1)(1 - alpha))-th smallest of the calibration set's true-class scores. Then the set contains the true
class for at least 1 - alpha of exchangeable new cases. Binary and multi-class tasks (a set is {negative},
{positive}, both: "unsure", or empty).

Abstention: leaving the least certain cases to a reader (binary: probability nearest the run's threshold;
multi-class: lowest top probability) and scoring the rest gives the accuracy-versus-coverage curve.
"""

from __future__ import annotations

import numpy as np

KEEP_FRACTIONS = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def class_index(task, targets) -> np.ndarray:
    """Class-order column of each case's true class (binary targets are 1 = positive)."""
    t = np.asarray(targets, dtype=int)
    if task.type != "binary":
        return t
    pos = task.classes.index(task.positive)
    return np.where(t == 1, pos, 1 - pos)


def prediction_sets(cal_probs, cal_y, probs, alpha: float) -> np.ndarray:
    """(n, C) boolean prediction sets for `probs` (class order) from the calibration probabilities and labels."""
    from crepes import ConformalClassifier

    cal_probs, probs = np.asarray(cal_probs, dtype=float), np.asarray(probs, dtype=float)
    cal_alphas = 1 - cal_probs[np.arange(len(cal_probs)), np.asarray(cal_y, dtype=int)]
    cc = ConformalClassifier().fit(cal_alphas)
    # smoothing=False: deterministic sets (the smoothed p-values of crepes' default draw random numbers)
    return cc.predict_set(1 - probs, confidence=1 - alpha, smoothing=False).astype(bool)


def set_summary(sets: np.ndarray, y) -> dict:
    size = sets.sum(1)
    return {"n": int(len(size)), "coverage": float(sets[np.arange(len(size)), np.asarray(y, int)].mean()),
            "single": float((size == 1).mean()), "unsure": float((size > 1).mean()),
            "empty": float((size == 0).mean()), "mean_size": float(size.mean())}


def certainty(task_type: str, probs, threshold: float) -> np.ndarray:
    """Larger = more certain. Binary: distance of p(positive) from the threshold the decision is taken at."""
    probs = np.asarray(probs, dtype=float)
    if task_type == "binary":
        return np.abs(probs - threshold)
    return probs.max(1)


def abstention_curve(task_type: str, y, probs, threshold: float, keep=KEEP_FRACTIONS) -> list[dict]:
    """Accuracy on the most certain fraction of cases, for each fraction kept (binary: p(positive) (n,), targets
    0/1; multi-class: (n, C) and class indices)."""
    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    if len(y) == 0:
        return []
    pred = (probs >= threshold).astype(int) if task_type == "binary" else probs.argmax(1)
    order = np.argsort(-certainty(task_type, probs, threshold), kind="stable")
    out = []
    for f in keep:
        k = max(1, int(round(f * len(y))))
        sel = order[:k]
        out.append({"kept": float(f), "n": int(k), "accuracy": float((pred[sel] == y[sel]).mean())})
    return out


def member_spread(member_probs) -> np.ndarray:
    """(M, ...) probabilities of the M fold models -> standard deviation over the models (0 for one model)."""
    return np.asarray(member_probs, dtype=float).std(0)
