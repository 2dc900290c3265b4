"""Metrics a clinical paper reports, from scikit-learn, with patient-level bootstrap confidence intervals.

Shapes: binary -> y (n,) in {0, 1}, p (n,) probability of the positive class; multiclass -> y (n,) class
index, p (n, C) softmax; multilabel -> y (n, C) with NaN for unknown, p (n, C) sigmoid.
Metric names are lower-case as the run-folder contract fixes them. A metric that cannot be computed (one
class only in the sample) is None, never a made-up number.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from .vocab import METRICS


def _safe(fn, *args, **kw):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one class only: reported as None below, not as a warning
            v = float(fn(*args, **kw))
    except ValueError:  # e.g. only one class present
        return None
    return None if math.isnan(v) else v


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Equal-width ECE of binary probabilities (sklearn has calibration_curve but no ECE)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(ece)


def binary_metrics(y, p, threshold: float = 0.5, bins: int = 10) -> dict:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auroc": _safe(roc_auc_score, y, p),
        "auprc": _safe(average_precision_score, y, p) if y.any() else None,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(set(y)) > 1 else None,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "ece": expected_calibration_error(y, p, bins),
        "threshold": float(threshold),
        "n": int(len(y)),
        "n_positive": int(y.sum()),
    }


def _macro(per_class: dict, key: str):
    vals = [m[key] for m in per_class.values() if m.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def multiclass_metrics(y, p, classes, bins: int = 10) -> dict:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pred = p.argmax(1)
    per_class = {c: binary_metrics(y == i, p[:, i], 0.5, bins) for i, c in enumerate(classes)}
    for i, c in enumerate(classes):  # one-vs-rest sensitivity/specificity use the argmax decision
        pos, hit = y == i, pred == i
        per_class[c]["sensitivity"] = float((pos & hit).sum() / pos.sum()) if pos.any() else None
        per_class[c]["specificity"] = float((~pos & ~hit).sum() / (~pos).sum()) if (~pos).any() else None
    onehot = np.eye(len(classes))[y]
    conf = p.max(1)
    return {
        "auroc": _macro(per_class, "auroc"),
        "auprc": _macro(per_class, "auprc"),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _safe(balanced_accuracy_score, y, pred),  # a class may be absent in a resample
        "sensitivity": _macro(per_class, "sensitivity"),
        "specificity": _macro(per_class, "specificity"),
        "f1": float(f1_score(y, pred, average="macro", labels=list(range(len(classes))), zero_division=0)),
        "brier": float(((p - onehot) ** 2).sum(1).mean()),
        "ece": expected_calibration_error((pred == y).astype(float), conf, bins),  # top-label ECE
        "n": int(len(y)),
        "per_class": per_class,
    }


def multilabel_metrics(y, p, classes, threshold: float = 0.5, bins: int = 10) -> dict:
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    per_class = {}
    for i, c in enumerate(classes):
        known = ~np.isnan(y[:, i])  # blank labels are unknown, not negative
        per_class[c] = binary_metrics(y[known, i], p[known, i], threshold, bins) if known.any() else {}
    out = {k: _macro(per_class, k) for k in METRICS}
    out["n"] = int(len(y))
    out["per_class"] = per_class
    return out


def compute_metrics(task_type: str, y, p, classes, threshold: float = 0.5, bins: int = 10) -> dict:
    if task_type == "binary":
        return binary_metrics(y, p, threshold, bins)
    if task_type == "multiclass":
        return multiclass_metrics(y, p, classes, bins)
    return multilabel_metrics(y, p, classes, threshold, bins)


def youden_threshold(y, p) -> float:
    """Operating point maximising sensitivity + specificity - 1 (chosen on out-of-fold predictions)."""
    fpr, tpr, thr = roc_curve(np.asarray(y, dtype=int), np.asarray(p, dtype=float))
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thr[best], 0.0), 1.0))


def bootstrap_ci(task_type, y, p, classes, patients, threshold=0.5, n: int = 1000, seed: int = 0,
                 level: float = 0.95, bins: int = 10) -> dict:
    """Percentile CIs from resampling PATIENTS with replacement: images of one patient are correlated, so
    resampling images would give intervals that are too narrow."""
    if n <= 0:
        return {}
    y, p, patients = np.asarray(y), np.asarray(p), np.asarray(patients)
    uniq, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[k] for k in pick])
        m = compute_metrics(task_type, y[idx], p[idx], classes, threshold, bins)
        for k in METRICS:
            if m.get(k) is not None:
                draws[k].append(m[k])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
            for k, v in draws.items() if len(v) >= n // 2}
