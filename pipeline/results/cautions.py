"""Lines the report adds when its own numbers should not be taken at face value.

- Small folds: with n_pos positive and n_neg negative validation images, AUROC moves in steps of
  1 / (n_pos * n_neg), and one image ranked differently moves it by up to 1 / min(n_pos, n_neg). A fold with
  fewer than MIN_PER_CLASS images of a class (a step over 0.05) gives a coarse AUROC: three ultrasound folds
  "at 1.000" with 18-19 cines each said little, and the report did not say so.
- Cross-validation against the held-out test: the pooled out-of-fold AUROC's 95% interval (DeLong's variance,
  stats.delong_covariance: images treated as independent, so if anything too narrow) and the test's
  patient-bootstrap interval from summary.json; when the two intervals do not overlap, the report says the
  two estimates disagree (CV 0.984 against test 0.879 went unremarked).

Binary tasks only: the per-fold class counts and a single AUROC are what these rules read.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from pipeline.results.stats import delong_covariance

MIN_PER_CLASS = 20
Z95 = float(norm.ppf(0.975))


def small_fold_notes(summary: dict) -> list[str]:
    """One line per fold whose AUROC rests on fewer than MIN_PER_CLASS images of a class."""
    if summary.get("type") != "binary":
        return []
    pos = summary["positive_class"]
    neg = next(c for c in summary["classes"] if c != pos)
    lines = []
    for f in summary["folds"]:
        m = f["metrics"]
        if m.get("n") is None or m.get("n_positive") is None:
            continue
        n_pos, n_neg = int(m["n_positive"]), int(m["n"]) - int(m["n_positive"])
        fewest = min(n_pos, n_neg)
        if fewest >= MIN_PER_CLASS:
            continue
        auroc = "n/a" if m.get("auroc") is None else f"{m['auroc']:.3f}"
        step = "undefined (one class only)" if fewest == 0 else f"up to {1 / fewest:.2f}"
        lines.append(f"Fold {f['fold']} validates on {n_pos} {pos} and {n_neg} {neg} images: one image ranked "
                     f"differently moves its AUROC ({auroc}) by {step}; read it as a coarse figure.")
    return lines


def oof_auroc_interval(y, p) -> tuple[float, float, float] | None:
    """(AUROC, low, high): DeLong 95% interval of the pooled out-of-fold AUROC, clipped to [0, 1]."""
    y = np.asarray(y, dtype=int)
    if min(int(y.sum()), int(len(y) - y.sum())) < 2:
        return None
    aucs, cov = delong_covariance(y, [np.asarray(p, dtype=float)])
    auc, se = float(aucs[0]), math.sqrt(max(float(cov[0, 0]), 0.0))
    return auc, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)


def cv_test_note(summary: dict, oof_y, oof_p) -> list[str]:
    """One line when the out-of-fold and test AUROC intervals do not overlap, else nothing."""
    test = summary.get("test") or {}
    ci = (test.get("ci95") or {}).get("auroc")
    if summary.get("type") != "binary" or test.get("auroc") is None or not ci:
        return []
    cv = oof_auroc_interval(oof_y, oof_p)
    if cv is None:
        return []
    auc, lo, hi = cv
    if lo <= ci[1] and ci[0] <= hi:
        return []
    where = "above" if lo > ci[1] else "below"
    return [f"Cross-validation and the held-out test disagree beyond their intervals: pooled out-of-fold AUROC "
            f"{auc:.3f} (95% CI {lo:.3f} – {hi:.3f}, DeLong, images as independent) lies {where} the test's "
            f"{test['auroc']:.3f} ({ci[0]:.3f} – {ci[1]:.3f}, patient bootstrap). The test patients differ from "
            "the training ones, or the folds flatter the model (small folds, near duplicates within a patient "
            "or across patients, a model chosen on the folds): trust the test figure, and look "
            "for the cause before reporting the cross-validated one."]


def cautions(summary: dict, oof_y, oof_p) -> list[str]:
    return cv_test_note(summary, oof_y, oof_p) + small_fold_notes(summary)
