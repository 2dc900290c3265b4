"""Temperature scaling on constructed logits whose true temperature is known."""

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss

from pipeline.results.calibration import (
    apply_temperature,
    calibration_stats,
    fit_temperature,
    logits_from_probs,
    reliability,
)
from pipeline.results.metrics import expected_calibration_error


def _overconfident_binary(t_true: float, n: int = 20000, seed: int = 0):
    """Outcomes drawn from sigmoid(z); the model reports z * t_true (overconfident for t_true > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(float)
    return z * t_true, y


@pytest.mark.parametrize("t_true", [0.6, 2.5])
def test_binary_temperature_recovered(t_true):
    z, y = _overconfident_binary(t_true)
    (t,) = fit_temperature("binary", z, y)
    assert abs(t - t_true) / t_true < 0.05


def test_multiclass_and_multilabel_temperatures_recovered():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (20000, 3))
    y = np.array([rng.choice(3, p=row) for row in softmax(z, 1)])
    (t,) = fit_temperature("multiclass", z * 3.0, y)
    assert abs(t - 3.0) / 3.0 < 0.05
    # multi-label: one temperature per class, unknown labels (NaN) ignored
    z2 = rng.normal(0, 1.5, (20000, 2))
    y2 = (rng.random(z2.shape) < expit(z2)).astype(float)
    y2[:500, 0] = np.nan
    t2 = fit_temperature("multilabel", z2 * np.array([2.0, 0.5]), y2)
    assert abs(t2[0] - 2.0) / 2.0 < 0.05 and abs(t2[1] - 0.5) / 0.5 < 0.05


def test_ece_and_brier_drop_on_overconfident_probabilities():
    z, y = _overconfident_binary(3.0, seed=2)
    p = expit(z)
    (t,) = fit_temperature("binary", logits_from_probs("binary", p), y)
    q = apply_temperature("binary", p, [t])
    before, after = calibration_stats("binary", y, p), calibration_stats("binary", y, q)
    assert after["ece"] < before["ece"] / 3
    assert before["ece"] == pytest.approx(expected_calibration_error(y, p, 10))
    assert before["brier"] == pytest.approx(brier_score_loss(y, p))
    assert after["brier"] < before["brier"]
    # ranking unchanged: scaling is monotonic (ties only where float64 saturates at 0 or 1)
    assert (np.diff(q[np.argsort(p)]) >= 0).all()


def test_reliability_quantile_bins_have_equal_counts_and_wilson_intervals():
    rng = np.random.default_rng(3)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(float)
    bins = reliability("binary", y, p, bins=10)
    assert [b.n for b in bins] == [100] * 10
    order = np.argsort(p, kind="stable")
    first = order[:100]
    assert bins[0].mean_predicted == pytest.approx(p[first].mean())
    assert bins[0].observed == pytest.approx(y[first].mean())
    for b in bins:
        assert b.ci95[0] <= b.observed <= b.ci95[1]


def test_temperature_one_changes_nothing_and_softmax_rows_sum_to_one():
    p = softmax(np.random.default_rng(4).normal(size=(50, 4)), 1)
    assert np.allclose(apply_temperature("multiclass", p, [1.0]), p, atol=1e-9)
    q = apply_temperature("multiclass", p, [2.0])
    assert np.allclose(q.sum(1), 1) and (q.max(1) < p.max(1)).all()
