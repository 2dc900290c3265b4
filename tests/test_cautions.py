"""The report's cautions: folds too small for their AUROC to mean much, and CV against test beyond their
intervals. Constructed summaries and scores; AUROC checked against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.results.cautions import cautions, cv_test_note, oof_auroc_interval, small_fold_notes


def _summary(folds, test=None):
    return {"type": "binary", "classes": ["benign", "malignant"], "positive_class": "malignant",
            "folds": [{"fold": k, "metrics": {"auroc": a, "n": n, "n_positive": npos}}
                      for k, (a, n, npos) in enumerate(folds)], "test": test}


def _scores(n_pos, n_neg, shift, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, np.r_[rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)]


def test_small_folds_are_named_with_their_counts_and_step():
    notes = small_fold_notes(_summary([(1.0, 19, 9), (0.93, 120, 50), (1.0, 18, 8)]))
    assert notes[0] == ("Fold 0 validates on 9 malignant and 10 benign images: one image ranked differently "
                        "moves its AUROC (1.000) by up to 0.11; read it as a coarse figure.")
    assert notes[1].startswith("Fold 2 validates on 8 malignant and 10 benign") and "up to 0.12" in notes[1]
    assert len(notes) == 2  # 50 / 70 is enough


def test_oof_interval_is_delong_around_sklearns_auroc():
    y, p = _scores(60, 90, 1.0)
    auc, lo, hi = oof_auroc_interval(y, p)
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert lo < auc < hi and 0.05 < hi - lo < 0.25
    # a larger sample of the same separation narrows the interval about as 1 / sqrt(n)
    y4, p4 = _scores(240, 360, 1.0, seed=1)
    _, lo4, hi4 = oof_auroc_interval(y4, p4)
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.3)


def test_cv_and_test_beyond_their_intervals_get_a_line_and_overlapping_ones_do_not():
    y, p = _scores(45, 45, 6.0)  # separated: out-of-fold AUROC 1.000, interval [1, 1]
    assert roc_auc_score(y, p) == 1.0
    test = {"auroc": 0.879, "ci95": {"auroc": [0.80, 0.95]}}
    (line,) = cv_test_note(_summary([], test), y, p)
    assert line.startswith("Cross-validation and the held-out test disagree beyond their intervals: pooled "
                           "out-of-fold AUROC 1.000 (95% CI 1.000 – 1.000, DeLong")
    assert "lies above the test's 0.879 (0.800 – 0.950, patient bootstrap)" in line
    y, p = _scores(45, 45, 1.5)
    auc, lo, hi = oof_auroc_interval(y, p)
    overlapping = {"auroc": auc - 0.05, "ci95": {"auroc": [lo - 0.1, lo + 0.01]}}
    assert cv_test_note(_summary([], overlapping), y, p) == []
    assert cautions({**_summary([(0.9, 200, 100)], overlapping), "type": "multiclass"}, y, p) == []
