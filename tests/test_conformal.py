"""Split conformal sets reach their coverage on a large synthetic set; abstention and ensemble spread."""

import numpy as np
from scipy.special import softmax

from pipeline.results.conformal import abstention_curve, member_spread, prediction_sets, set_summary


def _synthetic(n, seed):
    """Three classes, labels drawn from the (calibrated) probabilities themselves."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(0, 1.5, (n, 3)), 1)
    y = np.array([rng.choice(3, p=row) for row in p])
    return p, y


def test_coverage_reaches_one_minus_alpha():
    cal_p, cal_y = _synthetic(3000, 0)
    p, y = _synthetic(10000, 1)
    for alpha in (0.1, 0.2):
        s = set_summary(prediction_sets(cal_p, cal_y, p, alpha), y)
        assert s["coverage"] >= 1 - alpha - 0.02
        assert s["coverage"] <= 1 - alpha + 0.03  # not trivially full sets either
        assert 0 < s["single"] < 1 and s["mean_size"] < 3


def test_set_rule_matches_the_conformal_quantile():
    cal_p, cal_y = _synthetic(500, 2)
    p, _ = _synthetic(200, 3)
    alpha = 0.1
    scores = np.sort(1 - cal_p[np.arange(500), cal_y])
    q = scores[int(np.ceil((500 + 1) * (1 - alpha))) - 1]
    expected = (1 - p) <= q
    assert (prediction_sets(cal_p, cal_y, p, alpha) == expected).all()


def test_abstention_keeps_the_most_certain_cases():
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.95, 0.05, 0.55, 0.45, 0.3, 0.9])  # the last two are confident errors
    curve = abstention_curve("binary", y, p, 0.5, keep=(1.0, 0.5))
    assert curve[0] == {"kept": 1.0, "n": 6, "accuracy": 4 / 6}
    # the 3 most certain: 0.95 (right), 0.05 (right), 0.9 (wrong)
    assert curve[1]["n"] == 3 and abs(curve[1]["accuracy"] - 2 / 3) < 1e-12


def test_member_spread_is_the_standard_deviation_over_models():
    m = np.array([[[0.2, 0.8]], [[0.4, 0.6]]])
    assert np.allclose(member_spread(m), [[0.1, 0.1]])
