"""One smoke run, trained once: calibration, subgroups, decision curve, conformal sets and the checklist in
summary.json, report.md, TensorBoard and `graystem evaluate`; the run's test predictions are predict's
calibrated probabilities."""

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.deploy.finished import load_run
from pipeline.deploy.inference import build_ensemble
from pipeline.tools.evaluate import main as evaluate_main
from pipeline.tools.export import example_input
from pipeline.tools.predict import predict_files

BLOCKS = ("calibration", "subgroups", "decision_curve", "conformal")


@pytest.fixture(scope="module")
def run(smoke_run, tmp_path_factory):
    """A copy of the session's smoke run, re-reported (no training) with subgroups: view_position from the
    DICOM headers; patient_sex is 'O' there; no PatientAge, so age_band is 'unknown'."""
    out = Path(shutil.copytree(smoke_run, tmp_path_factory.mktemp("runs") / "clinical"))
    assert main(["--resume", str(out), "--set", "report.subgroups=[view_position,patient_sex,age_band]",
                 "--set", "report.subgroup_min_n=5", "--quiet"]) == 0
    return out


def _csv(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_blocks_in_summary_report_checklist_and_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = json.loads((run / "summary.json").read_text())
    for block in BLOCKS:
        assert s[block], block
    cal = s["calibration"]
    (t,) = cal["temperature"]
    assert cal["method"] == "temperature" and 0.05 <= t <= 20 and t != 1.0
    for where in ("oof", "test"):
        assert set(cal[where]) == {"before", "after"}
        assert sum(b["n"] for b in cal[where]["after"]["reliability"]) == s[where]["n"]
    # the run's metrics are of the calibrated probabilities
    assert cal["test"]["after"]["ece"] == pytest.approx(s["test"]["ece"])
    assert cal["test"]["after"]["brier"] == pytest.approx(s["test"]["brier"])
    groups = {(r["attribute"], r["group"]) for r in s["subgroups"]["test"]}
    assert ("patient_sex", "O") in groups and ("age_band", "unknown") in groups
    assert {g for a, g in groups if a == "view_position"} <= {"AP", "PA"}
    whole = next(r for r in s["subgroups"]["test"] if r["attribute"] == "patient_sex")
    assert whole["n_images"] == s["test"]["n"] and (whole["too_small"] or whole["auroc"] == pytest.approx(
        s["test"]["auroc"]))
    assert len(s["decision_curve"]["test"]["table"]) == 5
    conf = s["conformal"]["test"]
    assert 0 <= conf["coverage"] <= 1 and conf["abstention"][0]["n"] == s["test"]["n"]

    report = (run / "report.md").read_text()
    for heading in ("## Calibration", "## Subgroups", "## Decision curve", "## Uncertainty per case"):
        assert heading in report
    for fig in ("reliability", "subgroups_forest", "decision_curve"):
        assert (run / f"{fig}.png").is_file() and f"({fig}.png)" in report
    checklist = (run / "checklist.md").read_text()
    assert s["provenance"]["manifest_sha256"] in checklist and f"T = {t:.3f}" in checklist
    assert "## Open: for the authors to write" in checklist and "Reference standard" in checklist

    acc = EventAccumulator(str(run / "tensorboard" / "summary"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    scalars, images = acc.Tags()["scalars"], acc.Tags()["images"]
    for tag in ("calibration/temperature_0", "calibration/test_ece_before", "calibration/test_ece_after",
                "conformal/test_coverage", "decision_curve/test_net_benefit_t0.10"):
        assert tag in scalars, tag
    assert any(tag.startswith("subgroups/test_auroc/") for tag in scalars)
    for fig in ("reliability", "subgroups_forest", "decision_curve"):
        assert f"figures/{fig}" in images


def test_run_test_predictions_are_the_calibrated_probabilities_predict_returns(run, small_chest):
    """The run calibrates its saved fold probabilities; predict divides the logits inside the ensemble module
    (as every export does: tests/test_export.py checks the graphs against it)."""
    finished = load_run(run)
    t = finished.deployment.temperature
    assert t == json.loads((run / "summary.json").read_text())["calibration"]["temperature"]
    row = _csv(run / "test_predictions.csv")[0]
    rows, _, _ = predict_files(run, [(str(small_chest.parent / row["image"]), None)])
    assert abs(rows[0]["prob_pneumonia"] - float(row["prob_pneumonia"])) < 1e-5
    assert abs(rows[0]["sd_pneumonia"] - float(row["sd_pneumonia"])) < 1e-5

    def uncalibrated(r):
        return replace(r, deployment=replace(r.deployment, temperature=None))

    x = example_input(finished, "gray", 3)
    with torch.no_grad():
        calibrated = build_ensemble(finished)(x).numpy()
        raw = build_ensemble(uncalibrated(finished))(x).numpy()
    assert np.abs(calibrated - raw).max() > 1e-4  # the temperature changes the probabilities
    one = replace(finished, checkpoints=finished.checkpoints[:1])
    with torch.no_grad():
        p, q = (build_ensemble(r)(x)[:, 1].numpy().astype(float) for r in (one, uncalibrated(one)))
    logit = lambda v: np.log(v) - np.log1p(-v)  # noqa: E731
    assert np.allclose(logit(p), logit(q) / t[0], atol=1e-4)  # each fold model's logit divided by T


def test_evaluate_reports_the_blocks_on_an_external_manifest(run, small_chest, tmp_path):
    rows = [{**r, "image": str(small_chest.parent / r["image"])} for r in _csv(small_chest) if r["split"] == "test"]
    manifest = tmp_path / "external.csv"  # the held-out rows with absolute paths (the shared set stays as it is)
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "ev"
    # the run's own test rows: an overlap the check refuses unless told (--allow-overlap marks the output)
    assert evaluate_main([str(run), "--manifest", str(manifest), "--out", str(out), "--quiet", "--allow-overlap"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n_images"] == len(rows)
    for block in BLOCKS:
        assert s[block], block
    assert s["calibration"]["temperature"] == load_run(run).deployment.temperature
    assert s["subgroups"]["external"] and s["conformal"]["external"]["n"] == s["n_images"]
    assert "sd_pneumonia" in _csv(out / "predictions.csv")[0]
    report = (out / "report.md").read_text()
    for heading in ("## Calibration", "## Subgroups", "## Decision curve", "## Uncertainty per case"):
        assert heading in report
