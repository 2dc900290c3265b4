"""Temperature scaling (Guo et al. 2017) fitted on the pooled out-of-fold logits, and reliability data.

One temperature T divides the logits before the sigmoid/softmax (one per class for multi-label). It leaves the
ranking of every case unchanged (AUROC is the same) and only makes the probabilities mean what they say.

Why written here: scikit-learn's CalibratedClassifierCV fits Platt (two parameters) or isotonic maps around an
estimator object it refits; netcal and similar packages are unmaintained or pull in heavy dependencies. The
one-parameter fit is a bounded 1-D minimisation of the negative log-likelihood over log T (scipy), a few lines.

Logits come back from the stored probabilities (logit(p) for sigmoid outputs, log p for softmax, which is the
logit up to a per-row constant that softmax ignores). Probabilities were saved from float32, so |logit| above
about 16 is clipped there; such cases are certain either way and move by less than 1e-7 after scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from pipeline.results.metrics import expected_calibration_error, wilson_ci

EPS = 1e-7
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def logits_from_probs(task_type: str, p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    if task_type == "multiclass":
        return np.log(p)
    return np.log(p) - np.log1p(-p)


def probs_from_logits(task_type: str, z, temperature) -> np.ndarray:
    z = np.asarray(z, dtype=float) / np.asarray(temperature, dtype=float)
    return softmax(z, axis=1) if task_type == "multiclass" else expit(z)


def apply_temperature(task_type: str, p, temperature) -> np.ndarray:
    """Probabilities of one model (as saved) -> the same model's probabilities with its logits divided by T."""
    if temperature is None:
        return np.asarray(p, dtype=float)
    t = np.asarray(temperature, dtype=float)
    return probs_from_logits(task_type, logits_from_probs(task_type, p), t if task_type == "multilabel" else t[0])


def _nll(task_type: str, z: np.ndarray, y: np.ndarray, log_t: float) -> float:
    z = z / np.exp(log_t)
    if task_type == "multiclass":
        return float(-log_softmax(z, axis=1)[np.arange(len(y)), y.astype(int)].mean())
    # binary cross-entropy in the stable form: log(1 + e^z) - y z
    return float((np.logaddexp(0, z) - y * z).mean())


def fit_temperature(task_type: str, z, y) -> list[float]:
    """Temperatures minimising the NLL of (logits z, targets y): [T] for binary and multi-class, one per class
    for multi-label (unknown labels, NaN, are left out of that class's fit)."""
    z, y = np.asarray(z, dtype=float), np.asarray(y, dtype=float)
    if task_type != "multilabel":
        return [_fit_one(task_type, z, y)]
    return [_fit_one("binary", z[~np.isnan(y[:, c]), c], y[~np.isnan(y[:, c]), c]) for c in range(y.shape[1])]


def _fit_one(task_type: str, z: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0 or (task_type != "multiclass" and len(set(y.tolist())) < 2):
        return 1.0  # nothing to learn a scale from: leave the model's probabilities as they are
    res = minimize_scalar(lambda lt: _nll(task_type, z, y, lt), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


@dataclass(frozen=True)
class ReliabilityBin:
    n: int
    mean_predicted: float
    observed: float
    ci95: list[float] | None

    def to_dict(self) -> dict:
        return {"n": self.n, "mean_predicted": self.mean_predicted, "observed": self.observed, "ci95": self.ci95}


def _binary_view(task_type: str, y, p) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, probability) pairs that calibration is judged on: binary p(positive); multi-class the top
    label's confidence against correctness; multi-label every known (case, class) pair."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if task_type == "binary":
        return y, p
    if task_type == "multiclass":
        return (p.argmax(1) == y).astype(float), p.max(1)
    known = ~np.isnan(y)
    return y[known], p[known]


def reliability(task_type: str, y, p, bins: int = 10) -> list[ReliabilityBin]:
    """Quantile bins (equal counts, so no bin is nearly empty), each with the observed frequency and its Wilson
    95% interval."""
    yy, pp = _binary_view(task_type, y, p)
    if len(pp) == 0:
        return []
    order = np.argsort(pp, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(pp))):
        k, n = float(yy[part].sum()), len(part)
        out.append(ReliabilityBin(n, float(pp[part].mean()), k / n, wilson_ci(k, n)))
    return out


def calibration_stats(task_type: str, y, p, bins: int = 10) -> dict:
    """ECE (equal-width bins, as summary.json's `ece`), Brier score and the reliability bins of one set."""
    yy, pp = _binary_view(task_type, y, p)
    if len(pp) == 0:
        return {"ece": None, "brier": None, "n": 0, "reliability": []}
    return {"ece": expected_calibration_error(yy, pp, bins), "brier": float(((pp - yy) ** 2).mean()),
            "n": int(len(pp)), "reliability": [b.to_dict() for b in reliability(task_type, y, p, bins)]}
