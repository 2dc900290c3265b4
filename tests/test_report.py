"""The run's report: operating points, PPV/NPV, Wilson intervals with a patient design effect, one threshold in
every file, provenance, TensorBoard without images, and --resume refusing changes to what trained the folds."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from pipeline.cli import main
from pipeline.results.metrics import (
    binary_metrics,
    compute_metrics,
    design_effect,
    proportion_cis,
    threshold_for,
    wilson_ci,
)


def test_wilson_interval_matches_the_formula_and_stays_open_at_the_edges():
    # reference values (Wilson 1927; e.g. statsmodels proportion_confint(method="wilson"))
    assert wilson_ci(13, 13) == pytest.approx([0.771905, 1.0], abs=1e-6)
    assert wilson_ci(0, 10) == pytest.approx([0.0, 0.277533], abs=1e-6)
    assert wilson_ci(5, 10) == pytest.approx([0.236593, 0.763407], abs=1e-6)
    assert wilson_ci(0, 0) is None


def test_design_effect_is_one_for_independent_images_and_grows_with_duplicates():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.3
    assert design_effect(y, np.ones(40), np.arange(40)) == 1.0
    # every patient's image twice: twice the images, the same information -> deff 2, the same interval
    twice = np.repeat(y, 2)
    assert design_effect(twice, np.ones(80), np.repeat(np.arange(40), 2)) == pytest.approx(2.0)
    p = np.where(y, 0.9, 0.1)
    single = proportion_cis("binary", y.astype(int), p, np.arange(40), 0.5)
    double = proportion_cis("binary", twice.astype(int), np.repeat(p, 2), np.repeat(np.arange(40), 2), 0.5)
    assert double["accuracy"] == pytest.approx(single["accuracy"])
    assert double["sensitivity"] == pytest.approx(single["sensitivity"])


def test_ppv_npv_and_confusion_counts_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = binary_metrics(y, p, 0.4)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.4).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["ppv"] == pytest.approx(tp / (tp + fp)) and m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["prevalence"] == pytest.approx(y.mean())
    mc = compute_metrics("multiclass", [0, 1, 2, 1], np.eye(3)[[0, 1, 1, 1]], ["a", "b", "c"])
    assert mc["per_class"]["b"]["ppv"] == pytest.approx(2 / 3) and mc["per_class"]["c"]["ppv"] is None
    assert mc["ppv"] == pytest.approx((1 + 2 / 3) / 2)  # macro over the classes where it is defined


def test_target_thresholds_reach_the_target_with_the_best_other_rate():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.25 + rng.random(300) * 0.75, 0, 1)
    t = threshold_for(y, p, sensitivity=0.95)
    m = binary_metrics(y, p, t)
    assert m["sensitivity"] >= 0.95
    # t lies between two scores (metrics._between): the lowest score above it classifies as t does, the next
    # higher one misses the target
    assert binary_metrics(y, p, np.sort(p[p > t])[0])["sensitivity"] == m["sensitivity"]
    above = np.sort(p[p > t])[1]
    assert binary_metrics(y, p, above)["sensitivity"] < 0.95
    t = threshold_for(y, p, specificity=0.9)
    assert binary_metrics(y, p, t)["specificity"] >= 0.9
    below = np.sort(p[p < t])[-1]
    assert binary_metrics(y, p, below)["specificity"] < 0.9
    assert threshold_for(np.zeros(5), p[:5], sensitivity=0.9) is None


@pytest.fixture(scope="module")
def quiet_run(small_chest, tmp_path_factory):
    """A smoke run with the Youden threshold and tracking.log_images off."""
    run = tmp_path_factory.mktemp("runs") / "r"
    assert main(["--config", "smoke", "--set", f"data.manifest={small_chest}",
                 "--set", "report.threshold=youden", "--set", "tracking.log_images=false",
                 "--output-dir", str(run), "--quiet"]) == 0
    return run


def test_operating_points_are_chosen_on_oof_and_applied_to_test(quiet_run):
    s = json.loads((quiet_run / "summary.json").read_text())
    names = [op["name"] for op in s["operating_points"]]
    assert names == ["youden", "target_sensitivity", "target_specificity"]
    youden = s["operating_points"][0]
    assert youden["threshold"] == s["threshold"] and youden["chosen_on"] == "oof"
    t = s["test"]
    assert {k: youden["test"][k] for k in ("tp", "fp", "tn", "fn")} == {k: t[k] for k in ("tp", "fp", "tn", "fn")}
    assert t["tp"] + t["fn"] == t["n_positive"] and t["tp"] + t["fp"] + t["tn"] + t["fn"] == t["n"]
    sens = s["operating_points"][1]
    assert sens["target"] == {"sensitivity": 0.95} and sens["oof"]["sensitivity"] >= 0.95
    for op in s["operating_points"]:
        for where in ("oof", "test"):
            lo, hi = op[where]["ci95"]["specificity"]
            assert lo < hi  # Wilson never collapses to a point
    assert t["ci_method"]["sensitivity"].startswith("Wilson") and "bootstrap" in t["ci_method"]["auroc"]
    assert t["prevalence"] == pytest.approx(t["n_positive"] / t["n"]) and t["n_patients"] >= 1


def test_fold_files_and_report_use_one_threshold(quiet_run):
    s = json.loads((quiet_run / "summary.json").read_text())
    with (quiet_run / "oof_predictions.csv").open() as fh:
        oof = list(csv.DictReader(fh))
    for f in s["folds"]:
        rows = [r for r in oof if int(r["fold"]) == f["fold"]]
        y = np.array([r["label"] == "pneumonia" for r in rows], dtype=int)
        p = np.array([float(r["prob_pneumonia"]) for r in rows])
        acc = float(((p >= s["threshold"]) == y).mean())
        assert f["metrics"]["accuracy"] == pytest.approx(acc, abs=1e-5)
        result = json.loads((quiet_run / f"fold_{f['fold']}" / "result.json").read_text())
        assert "metrics" not in result  # the training-time values are labelled as such
        assert result["training_threshold"] == 0.5 and "auroc" in result["metrics_at_training_threshold"]
    report = (quiet_run / "report.md").read_text()
    assert "Wilson score 95% CI for proportions" in report and "pooled out-of-fold" in report
    assert "prevalence" in report and "(TN)" in report and "## Operating points" in report
    for png in ("roc.png", "calibration.png", "confusion.png"):
        assert (quiet_run / png).is_file()


def test_summary_records_provenance(quiet_run):
    prov = json.loads((quiet_run / "summary.json").read_text())["provenance"]
    assert set(prov["versions"]) == {"torch", "timm", "monai", "pydicom", "numpy", "sklearn", "graystem"}
    assert prov["versions"]["torch"]
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40
    assert len(prov["manifest_sha256"]) == 64 and len(prov["config_sha256"]) == 64
    assert prov["machine"]["cores"] >= 1 and prov["wall_time_s"] > 0
    assert set(prov["fold_seconds"]) == {"0", "1"}


def test_log_images_false_keeps_images_out_of_tensorboard(quiet_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.results.tracking import Tags

    for fold in ("fold_0", "fold_1"):
        acc = EventAccumulator(str(quiet_run / "tensorboard" / fold), size_guidance={"images": 0})
        acc.Reload()
        assert acc.Tags()["images"] == []  # no patient pixels
        assert Tags.val("auroc") in acc.Tags()["scalars"]
    acc = EventAccumulator(str(quiet_run / "tensorboard" / "summary"), size_guidance={"images": 0})
    acc.Reload()
    assert Tags.INPUTS not in acc.Tags()["images"]  # only the metric figures (ROC, calibration, confusion)


def test_resume_refuses_changes_to_what_trained_the_folds(quiet_run, capsys):
    rc = main(["--resume", str(quiet_run), "--set", "train.seed=7", "--set", "train.stages.0.lr=0.1",
               "--set", "report.bootstrap=10"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "train.seed" in err and "train.stages.0.lr" in err and "report.bootstrap" not in err.split(", which")[0]
    before = Path(quiet_run / "fold_0" / "best.pt").stat().st_mtime_ns
    assert main(["--resume", str(quiet_run), "--set", "report.bootstrap=10", "--quiet"]) == 0  # reporting only
    assert Path(quiet_run / "fold_0" / "best.pt").stat().st_mtime_ns == before
