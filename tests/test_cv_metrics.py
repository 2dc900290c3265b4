"""Patient-grouped folds never share a patient; metrics equal scikit-learn's; patient bootstrap CIs."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.config import load_config
from pipeline.data.cv import make_splits
from pipeline.data.manifest import Sample
from pipeline.errors import DataError
from pipeline.results.metrics import binary_metrics, bootstrap_ci, compute_metrics, youden_threshold


def _rows(n_patients=60, seed=0, test_every=5, split_column=True):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 == 0)
        for k in range(rng.integers(1, 4)):
            split = ("test" if p % test_every == 0 else "train") if split_column else None
            rows.append(Sample(image=f"p{p}_{k}.dcm", image_text=f"p{p}_{k}.dcm", target=label, label=str(label),
                               patient_id=f"P{p:03d}", patient_known=True, split=split, frame=None, row=p + 2))
    return rows


def test_folds_are_patient_disjoint_and_cover_every_patient():
    cfg = load_config("chest_xray")
    rows = _rows()
    splits = make_splits(rows, cfg)
    val_sets = [set(f.val_patients) for f in splits.folds]
    dev_patients = {r.patient_id for r in rows if r.split == "train"}
    assert len(val_sets) == 5
    for i in range(5):
        for j in range(i + 1, 5):
            assert not val_sets[i] & val_sets[j]
        assert not set(splits.folds[i].train_patients) & val_sets[i]
    assert set().union(*val_sets) == dev_patients
    assert not dev_patients & set(splits.test_patients)
    tr, va = splits.fold_indices(rows, 0)
    assert {rows[i].patient_id for i in tr}.isdisjoint({rows[i].patient_id for i in va})
    assert all(rows[i].split == "test" for i in splits.test_indices(rows))
    # stratified: every validation fold holds both classes
    for f in range(5):
        _, va = splits.fold_indices(rows, f)
        assert {rows[i].target for i in va} == {0, 1}


def test_test_fraction_holds_out_whole_patients():
    cfg = load_config("chest_xray", ["cv.test_fraction=0.2"])
    rows = _rows(split_column=False)
    splits = make_splits(rows, cfg)
    held = set(splits.test_patients)
    assert 0.1 < len(held) / 60 < 0.3
    test = set(splits.test_indices(rows))
    for i, r in enumerate(rows):
        assert (i in test) == (r.patient_id in held)
        assert i not in set().union(*(set(splits.fold_indices(rows, k)[1]) for k in range(5))) or i not in test


def test_too_few_patients_per_class_is_a_data_error():
    cfg = load_config("chest_xray")
    rows = _rows(n_patients=9)
    with pytest.raises(DataError, match="cv.folds"):
        make_splits(rows, cfg)


def test_binary_metrics_match_sklearn_and_hand_counts():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.4, 0.6, 0.7, 0.3, 0.9, 0.8, 0.2])
    m = binary_metrics(y, p, threshold=0.5)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    # at 0.5: TP=3 (0.7, 0.9, 0.8), FN=1 (0.3), TN=3, FP=1 (0.6)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert binary_metrics(np.zeros(4), np.full(4, 0.2))["auroc"] is None
    t = youden_threshold(y, p)
    assert binary_metrics(y, p, t)["sensitivity"] + binary_metrics(y, p, t)["specificity"] >= 1.5


def test_multiclass_and_multilabel_macro():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    p[np.arange(90), y] += 1.0
    p /= p.sum(1, keepdims=True)
    m = compute_metrics("multiclass", y, p, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert set(m["per_class"]) == {"a", "b", "c"}
    ym = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=float)
    pm = np.array([[0.9, 0.1], [0.2, 0.9], [0.8, 0.7], [0.1, 0.3]])
    ml = compute_metrics("multilabel", ym, pm, ["x", "y"])
    assert ml["per_class"]["y"]["n"] == 3  # the blank label is left out, not counted as negative
    assert ml["auroc"] == pytest.approx(1.0)


def test_bootstrap_resamples_patients():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(40), 3)
    y = (patients % 2).astype(int)
    p = np.clip(y * 0.3 + rng.random(120) * 0.7, 0, 1)
    ci = bootstrap_ci("binary", y, p, ["n", "p"], patients, n=200)
    auc = roc_auc_score(y, p)
    assert ci["auroc"][0] < auc < ci["auroc"][1]
    assert ci["auroc"][1] - ci["auroc"][0] > 0.02
