"""Net benefit against values worked out by hand."""

import numpy as np
import pytest

from pipeline.results.decision_curve import decision_curve, net_benefit, treat_all, useful_ranges

# 10 cases, 4 positive
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.7, 0.4, 0.15, 0.6, 0.35, 0.25, 0.1, 0.05, 0.02])


@pytest.mark.parametrize("t, expected", [
    # t=0.1: called p >= 0.1 -> TP 4 (0.9 .7 .4 .15), FP 4 (.6 .35 .25 .1): 4/10 - 4/10 * (0.1/0.9)
    (0.1, 0.4 - 0.4 / 9),
    # t=0.3: TP 3, FP 2 (.6 .35): 0.3 - 0.2 * 3/7
    (0.3, 0.3 - 0.2 * 3 / 7),
    # t=0.5: TP 2, FP 1 (.6): 0.2 - 0.1 * 1
    (0.5, 0.2 - 0.1),
])
def test_net_benefit_equals_hand_computed(t, expected):
    assert net_benefit(Y, P, t) == pytest.approx(expected)


def test_treat_all_and_table():
    # prevalence 0.4: treat all at t=0.2 -> 0.4 - 0.6 * 0.25 = 0.25
    assert treat_all(Y, 0.2) == pytest.approx(0.25)
    curve = decision_curve(Y, P)
    row = next(r for r in curve["table"] if r["threshold"] == 0.3)
    assert row["model"] == pytest.approx(0.3 - 0.2 * 3 / 7) and row["treat_none"] == 0.0
    assert len(curve["model"]) == len(curve["thresholds"]) == 99
    # at 0.3 the model (0.214) beats treat-all (0.4 - 0.6 * 3/7 = 0.143) and none
    assert any(lo <= 0.3 <= hi for lo, hi in useful_ranges(curve))
    # at 0.01 every case is called positive (lowest p is 0.02): the model only equals treat-all there
    assert useful_ranges(curve)[0][0] > 0.01
    flat = {"thresholds": [0.1, 0.2, 0.3, 0.4], "model": [0.3, 0.1, 0.3, 0.3], "treat_all": [0.2, 0.2, 0.2, 0.2]}
    assert useful_ranges(flat) == [[0.1, 0.1], [0.3, 0.4]]
