"""Metrics a clinical paper reports, from scikit-learn, with patient-level bootstrap confidence intervals.

Shapes: binary -> y (n,) in {0, 1}, p (n,) probability of the positive class; multiclass -> y (n,) class
index, p (n, C) softmax; multilabel -> y (n, C) with NaN for unknown, p (n, C) sigmoid.
Metric names are lower-case as the run-folder contract fixes them. A metric that cannot be computed (one
class only in the sample) is None, never a made-up number.

Intervals: proportions (accuracy, sensitivity, specificity, PPV, NPV) get Wilson score intervals with the
sample size divided by a design effect estimated from the patient clustering (`wilson_ci`); the other metrics
(AUROC, AUPRC, Brier, ECE, F1, macro averages) get a patient-bootstrap percentile interval (`bootstrap_ci`).
A percentile bootstrap of a proportion collapses to a point when every resample agrees (13 negatives all
called negative give 1.000 - 1.000); Wilson's interval stays honest there (0.77 - 1.00).
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

from pipeline.vocab import METRICS, PROPORTION_METRICS


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
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "auroc": _safe(roc_auc_score, y, p),
        "auprc": _safe(average_precision_score, y, p) if y.any() else None,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(set(y)) > 1 else None,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "ppv": float(tp / (tp + fp)) if tp + fp else None,
        "npv": float(tn / (tn + fn)) if tn + fn else None,
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, p, pos_label=1)),
        "ece": expected_calibration_error(y, p, bins),
        "threshold": float(threshold),
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "prevalence": float(y.mean()) if len(y) else None,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def _macro(per_class: dict, key: str):
    vals = [m[key] for m in per_class.values() if m.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def multiclass_metrics(y, p, classes, bins: int = 10) -> dict:
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pred = p.argmax(1)
    per_class = {c: binary_metrics(y == i, p[:, i], 0.5, bins) for i, c in enumerate(classes)}
    for i, c in enumerate(classes):  # one-vs-rest threshold metrics use the argmax decision
        pos, hit = y == i, pred == i
        tp, fp, tn, fn = (int(v.sum()) for v in (pos & hit, ~pos & hit, ~pos & ~hit, pos & ~hit))
        per_class[c].update(
            tp=tp, fp=fp, tn=tn, fn=fn, threshold=None,
            sensitivity=tp / (tp + fn) if tp + fn else None, specificity=tn / (tn + fp) if tn + fp else None,
            ppv=tp / (tp + fp) if tp + fp else None, npv=tn / (tn + fn) if tn + fn else None)
    onehot = np.eye(len(classes))[y]
    conf = p.max(1)
    return {
        "auroc": _macro(per_class, "auroc"),
        "auprc": _macro(per_class, "auprc"),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _safe(balanced_accuracy_score, y, pred),  # a class may be absent in a resample
        "sensitivity": _macro(per_class, "sensitivity"),
        "specificity": _macro(per_class, "specificity"),
        "ppv": _macro(per_class, "ppv"),
        "npv": _macro(per_class, "npv"),
        "f1": float(f1_score(y, pred, average="macro", labels=list(range(len(classes))), zero_division=0)),
        "brier": float(((p - onehot) ** 2).sum(1).mean()),
        "ece": expected_calibration_error((pred == y).astype(float), conf, bins),  # top-label ECE
        "n": int(len(y)),
        "n_correct": int((pred == y).sum()),
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(classes)))).tolist(),  # rows: truth
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


def _between(p, t: float) -> float:
    """roc_curve's thresholds are scores themselves; a score written to a CSV with 6 decimals can then fall
    on the other side of `>=`. The midpoint between the chosen score and the next lower one classifies these
    predictions identically and keeps rounded files consistent with the reported metrics."""
    below = p[p < t]
    t = (t + below.max()) / 2 if below.size else t
    return float(min(max(t, 0.0), 1.0))


def youden_threshold(y, p) -> float:
    """Operating point maximising sensitivity + specificity - 1 (chosen on out-of-fold predictions)."""
    p = np.asarray(p, dtype=float)
    fpr, tpr, thr = roc_curve(np.asarray(y, dtype=int), p)
    return _between(p, thr[int(np.argmax(tpr - fpr))])


def threshold_for(y, p, *, sensitivity: float | None = None, specificity: float | None = None) -> float | None:
    """The operating point that reaches a target on these (out-of-fold) predictions: for a target
    sensitivity the highest threshold that still reaches it (so specificity is as high as it can be), for a
    target specificity the lowest one. Predictions at or above the threshold are positive."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if len(set(y)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thresholds decreasing, rates increasing
    if sensitivity is not None:
        k = int(np.argmax(tpr >= sensitivity - 1e-12))
    else:
        k = int(np.flatnonzero(fpr <= 1 - specificity + 1e-12)[-1])
    return _between(p, thr[k])


def design_effect(successes, trials, clusters) -> float:
    """Design effect of a proportion over units clustered by patient: the variance of the ratio estimator
    sum(y)/sum(m) over patients divided by the variance if all units were independent, between 1 (clustering
    never makes a proportion more precise here) and the largest patient's count. When p is 0 or 1 the data
    say nothing about the within-patient correlation, so the conservative mean units per patient is used
    (perfect correlation: the patients are the sample); with one unit per patient that is 1."""
    y, m, clusters = np.asarray(successes, float), np.asarray(trials, float), np.asarray(clusters)
    n = m.sum()
    if n == 0:
        return 1.0
    _, inv = np.unique(clusters, return_inverse=True)
    yc, mc = np.bincount(inv, weights=y), np.bincount(inv, weights=m)
    p = y.sum() / n
    if p in (0.0, 1.0):
        return float(n / len(mc))
    var_cluster = ((yc - p * mc) ** 2).sum() / n**2
    return float(min(max(1.0, var_cluster / (p * (1 - p) / n)), mc.max()))


def wilson_ci(k: float, n: float, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of k successes in n (n may be an effective, non-integer size)."""
    if n <= 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf((1 + level) / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def _proportions(task_type, y, p, threshold) -> dict:
    """metric -> (per-unit success indicator, per-unit trial indicator) of each proportion metric."""
    if task_type == "binary":
        y = np.asarray(y, dtype=int)
        pred = np.asarray(p, dtype=float) >= threshold
        pos, hit = y == 1, pred
        return {"accuracy": (pos == hit, np.ones_like(pos)), "sensitivity": (pos & hit, pos),
                "specificity": (~pos & ~hit, ~pos), "ppv": (pos & hit, hit), "npv": (~pos & ~hit, ~hit)}
    if task_type == "multiclass":
        y = np.asarray(y, dtype=int)
        ok = np.asarray(p).argmax(1) == y
        return {"accuracy": (ok, np.ones_like(ok))}
    return {}  # multi-label macro averages are not proportions: bootstrap only


def proportion_cis(task_type, y, p, patients, threshold=0.5, level: float = 0.95) -> dict:
    """Design-effect-adjusted Wilson intervals of the proportion metrics: {metric: [lo, hi]}, plus
    {'deff': {metric: design effect}} so the report can say how much the clustering widened them."""
    out, deff = {}, {}
    patients = np.asarray(patients)
    for name, (succ, trials) in _proportions(task_type, y, p, threshold).items():
        use = np.asarray(trials, dtype=bool)
        if not use.any():
            continue
        succ = np.asarray(succ, dtype=float)[use]
        d = design_effect(succ, np.ones_like(succ), patients[use])
        deff[name] = d
        out[name] = wilson_ci(succ.sum() / d, use.sum() / d, level)
    out["deff"] = deff
    return out


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


def confidence_intervals(task_type, y, p, classes, patients, threshold=0.5, n: int = 1000, seed: int = 0,
                         bins: int = 10) -> tuple[dict, dict, dict]:
    """(ci95, method per metric, design effects): Wilson (design-effect adjusted) for proportions, patient
    bootstrap percentile for the rest."""
    ci = bootstrap_ci(task_type, y, p, classes, patients, threshold, n=n, seed=seed, bins=bins)
    method = {k: "patient bootstrap percentile" for k in ci}
    wilson = proportion_cis(task_type, y, p, patients, threshold)
    deff = wilson.pop("deff")
    for k, v in wilson.items():
        if v is not None and k in PROPORTION_METRICS:
            ci[k], method[k] = v, "Wilson score (design-effect adjusted)"
    return ci, method, deff
