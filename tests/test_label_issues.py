"""Suspect labels: cleanlab on out-of-fold probabilities ranks known flipped labels first."""

import numpy as np

from pipeline.config import load_config
from pipeline.results.label_issues import find_issues, items_from_predictions, summary_block, to_csv
from pipeline.results.report import _write_predictions


def _items(n=300, flips=15, seed=0):
    """Binary out-of-fold items: a confident model (p of the true class 0.65-0.99), then `flips` labels flipped."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    p_true = rng.uniform(0.65, 0.99, n)
    p_pos = np.where(truth == 1, p_true, 1 - p_true)
    flipped = set(rng.choice(n, flips, replace=False).tolist())
    names = ["normal", "pneumonia"]
    items = [{"image": f"img{i}.png", "patient_id": f"P{i}", "label": names[1 - truth[i] if i in flipped else truth[i]],
              "target": None, "prob": np.array([p_pos[i]])} for i in range(n)]
    return items, flipped


def test_flipped_labels_rank_first(tmp_path):
    cfg = load_config("smoke", [])
    items, flipped = _items()
    issues = find_issues(cfg.task, items)
    top = [int(x.image[3:-4]) for x in issues[: len(flipped)]]
    assert len(set(top) & flipped) >= 13  # most of the top k are the flipped ones
    assert [x.rank for x in issues[:3]] == [1, 2, 3]
    assert issues[0].self_confidence == min(x.self_confidence for x in issues)
    block = summary_block(cfg.task, issues, len(items))
    assert block["count"] == len(issues) >= 13 and block["of"] == 300
    # the same from a finished run's oof_predictions.csv (what `graystem audit --run` reads)
    items_fold = [dict(it, fold=0, frames=1, extra={}) for it in items]
    _write_predictions(tmp_path / "oof_predictions.csv", items_fold, cfg.task, with_fold=True)
    again = find_issues(cfg.task, items_from_predictions(cfg.task, tmp_path / "oof_predictions.csv"))
    assert [x.image for x in again] == [x.image for x in issues]
    text = to_csv(cfg.task, issues).splitlines()
    assert text[0] == "rank,image,patient_id,given_label,oof_prob_normal,oof_prob_pneumonia,self_confidence"


def test_multilabel_ranks_per_finding():
    cfg = load_config("smoke", ["task.type=multilabel", "task.classes=[effusion,nodule]"])
    rng = np.random.default_rng(1)
    n = 200
    truth = rng.integers(0, 2, (n, 2))
    p = np.where(truth == 1, rng.uniform(0.7, 0.99, (n, 2)), rng.uniform(0.01, 0.3, (n, 2)))
    given = truth.astype(float)
    flips = {0: set(range(0, 10)), 1: set(range(100, 110))}
    for c, rows in flips.items():
        for i in rows:
            given[i, c] = 1 - given[i, c]
    given[150, 0] = np.nan  # unknown: never judged
    items = [{"image": f"img{i}.png", "patient_id": f"P{i}", "label": "", "target": tuple(given[i]),
              "prob": p[i]} for i in range(n)]
    issues = find_issues(cfg.task, items)
    for c, name in enumerate(cfg.task.classes):
        ranked = [int(x.image[3:-4]) for x in issues if x.finding == name]
        assert len(set(ranked[:10]) & flips[c]) >= 8  # most of the top k
        assert 150 not in ranked or c == 1
