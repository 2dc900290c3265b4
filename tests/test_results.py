"""Results a paper can stand on: published folds, repeated seeds, external evaluation, paired comparisons."""

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from pipeline.cli import main as train_main
from pipeline.config import load_config
from pipeline.data.cv import make_splits
from pipeline.data.manifest import load_manifest
from pipeline.demo import make_demo
from pipeline.deploy.finished import load_run
from pipeline.results.stats import delong_test
from pipeline.tools.compare import compare
from pipeline.tools.compare import main as compare_main
from pipeline.tools.evaluate import main as evaluate_main
from pipeline.tools.predict import predict_files


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("chest_xray", "ultrasound"), n_scale=0.25)
    return root


SEEDS_RUN_WARNINGS: list[str] = []


@pytest.fixture(scope="module")
def seeds_run(demo, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "smoke_seeds"
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: SEEDS_RUN_WARNINGS.append(record.getMessage())
    logging.getLogger("graystem").addHandler(handler)
    try:
        rc = train_main(["--config", "smoke", "--set", f"data.manifest={demo / 'chest_xray' / 'labels.csv'}",
                         "--output-dir", str(run), "--seeds", "2", "--quiet"])
    finally:
        logging.getLogger("graystem").removeHandler(handler)
    assert rc == 0
    return run


# ---------- published folds ----------

def _with_folds(demo: Path, name: str, fold_of) -> Path:
    rows = _rows(demo / "chest_xray" / "labels.csv")
    for r in rows:
        r["fold"] = "" if r["split"] == "test" else fold_of(r)
    return _write(demo / "chest_xray" / name, rows)  # beside the images: relative paths resolve


def test_fold_column_is_honoured_exactly(demo, tmp_path):
    # fold values 1, 3, 7 (not 0..k-1) and three folds although the smoke config says cv.folds: 2
    values = [1, 3, 7]
    path = _with_folds(demo, "folds3.csv", lambda r: str(values[int(r["patient_id"][1:]) % 3]))
    cfg = load_config("smoke", [f"data.manifest={path}"])
    samples = load_manifest(cfg).samples
    splits = make_splits(samples, cfg)
    assert splits.n_folds == 3
    for k, v in enumerate(values):  # sorted fold values become folds 0..k-1
        expected = {s.patient_id for s in samples if s.fold == v}
        assert set(splits.folds[k].val_patients) == expected
        assert set(splits.folds[k].train_patients) == {s.patient_id for s in samples if s.fold not in (v, None)}
    assert set(splits.test_patients) == {s.patient_id for s in samples if s.split == "test"}


def test_patient_in_two_folds_is_refused_with_one_line(demo, tmp_path, capsys):
    path = _with_folds(demo, "folds_twin.csv", lambda r: str(int(r["patient_id"][1:]) % 2))
    rows = _rows(path)
    twin = next(r for r in rows if r["split"] == "train")
    rows.append({**twin, "fold": str(1 - int(twin["fold"]))})  # the same patient again, in the other fold
    _write(path, rows)
    rc = train_main(["--config", "smoke", "--set", f"data.manifest={path}", "--output-dir", str(tmp_path / "run"),
                     "--dry-run", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert twin["patient_id"] in err and "two folds" in err


# ---------- repeated seeds ----------

def test_two_seeds_give_two_sets_of_fold_results_and_their_mean(seeds_run):
    summary = json.loads((seeds_run / "summary.json").read_text())
    assert [s["seed"] for s in summary["seeds"]] == [42, 43]
    for s in summary["seeds"]:
        assert [f["fold"] for f in s["folds"]] == [0, 1]
        assert (seeds_run / f"seed_{s['seed']}" / "fold_1" / "best.pt").is_file()
        assert s["test"]["auroc"] is not None
    per_seed = [s["mean"]["auroc"] for s in summary["seeds"]]
    assert summary["seeds_mean"]["cv"]["auroc"] == pytest.approx(np.mean(per_seed))
    assert summary["seeds_sd"]["cv"]["auroc"] == pytest.approx(np.std(per_seed, ddof=1))
    assert summary["test"]["n_models"] == 4  # top level: every seed's fold models
    assert "Repeated seeds" in (seeds_run / "report.md").read_text()
    run = load_run(seeds_run)
    assert run.seeds == (42, 43) and len(run.checkpoints) == 4
    # one Grad-CAM panel, of the seed ensemble; the seed folders are not runs of their own to load
    assert (seeds_run / "cam_panel.png").is_file() and not list(seeds_run.glob("seed_*/cam_panel.png"))
    assert not [w for w in SEEDS_RUN_WARNINGS if "panel not drawn" in w], SEEDS_RUN_WARNINGS


# ---------- external evaluation and predict ----------

def test_evaluate_on_the_runs_own_test_split_reproduces_its_test_metrics(seeds_run, demo, tmp_path):
    rows = [r for r in _rows(demo / "chest_xray" / "labels.csv") if r["split"] == "test"]
    manifest = _write(demo / "chest_xray" / "external.csv", rows)  # beside the images, as a real manifest
    out = tmp_path / "ev"
    # the run's own test rows are not an external set: scored only when asked, and marked
    assert evaluate_main([str(seeds_run), "--manifest", str(manifest), "--out", str(out), "--quiet"]) == 2
    assert evaluate_main([str(seeds_run), "--manifest", str(manifest), "--out", str(out), "--quiet",
                          "--allow-overlap"]) == 0
    own = json.loads((seeds_run / "summary.json").read_text())
    ev = json.loads((out / "summary.json").read_text())
    assert not ev["overlap"]["external"] and len(ev["overlap"]["by_path"]) == len(rows)
    assert ev["test"]["n"] == own["test"]["n"] == len(rows)
    assert ev["test"]["auroc"] == pytest.approx(own["test"]["auroc"], abs=1e-6)
    assert ev["threshold"] == own["threshold"]
    assert set(ev["test"]["ci95"]) == set(own["test"]["ci95"])
    preds = _rows(out / "predictions.csv")
    assert list(preds[0])[:4] == ["image", "patient_id", "frames", "label"] and "predicted" in preds[0]
    for name in ("roc.png", "calibration.png", "report.md"):
        assert (out / name).is_file(), name


@pytest.fixture(scope="module")
def ultrasound_run(demo, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "us"
    rc = train_main(["--config", "ultrasound", "--set", f"data.manifest={demo / 'ultrasound' / 'labels.csv'}",
                     "--set", "data.image_size=64", "--set", "data.frames=all", "--set", "cv.folds=2",
                     "--set", "train.stages.0.epochs=1", "--set", "train.stages.1.epochs=1",
                     "--set", "report.bootstrap=20", "--output-dir", str(run), "--quiet"])
    assert rc == 0
    return run


def test_predict_on_ultrasound_cines_reproduces_the_runs_test_predictions(ultrasound_run, demo):
    test = _rows(ultrasound_run / "test_predictions.csv")
    assert any(int(r["frames"]) > 1 for r in test)  # cines: every frame scored, averaged per file
    root = demo / "ultrasound"
    rows, skipped, classes = predict_files(ultrasound_run, [(str(root / r["image"]), None) for r in test])
    assert not skipped and classes == ["normal", "lesion"]
    threshold = json.loads((ultrasound_run / "summary.json").read_text())["threshold"]
    for r, p in zip(test, rows, strict=True):
        assert p["frames"] == int(r["frames"])
        assert abs(p["prob_lesion"] - float(r["prob_lesion"])) < 1e-5, r["image"]
        assert p["predicted"] == ("lesion" if p["prob_lesion"] >= threshold else "normal")


def test_monai_bundle_averages_a_cines_frames_as_predict_does(ultrasound_run, demo, tmp_path):
    from monai.bundle import ConfigParser

    from pipeline.tools.export import main as export_main

    bundle = tmp_path / "bundle"
    assert export_main([str(ultrasound_run), "--format", "monai-bundle", "--out", str(bundle), "--no-check"]) == 0
    cine = next(r for r in _rows(ultrasound_run / "test_predictions.csv") if int(r["frames"]) > 1)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"], parser["image"] = str(bundle), str(demo / "ultrasound" / cine["image"])
    assert parser.get_parsed_content("preprocessing")({"image": parser["image"]})["image"].shape[0] == int(cine["frames"])
    probs = parser.get_parsed_content("probabilities")
    # predict rounds pixels as the run's 16-bit cache did; the bundle reads float pixels: 1e-4, not 1e-5
    assert abs(float(probs[1]) - float(cine["prob_lesion"])) < 1e-4


# ---------- paired comparison ----------

def _delong_reference(y, a, b):
    """DeLong, DeLong & Clarke-Pearson (1988) as written: structural components from explicit pairwise
    comparisons of every positive with every negative, O(n * m)."""
    y = np.asarray(y)
    comps, aucs = [], []
    for s in (np.asarray(a), np.asarray(b)):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        comps.append((psi.mean(1), psi.mean(0)))  # V10 per positive, V01 per negative
    m, n = (y == 1).sum(), (y == 0).sum()
    s10 = np.cov(np.vstack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return aucs[1] - aucs[0], 2 * norm.sf(abs(aucs[1] - aucs[0]) / np.sqrt(var))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_delong_matches_the_pairwise_reference(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties, within and across classes
    b = np.round(0.5 * a + rng.normal(y * 0.6, 1.0), 1)
    diff, p = delong_test(y, a, b)
    ref_diff, ref_p = _delong_reference(y, a, b)
    assert diff == pytest.approx(ref_diff, abs=1e-12)
    assert p == pytest.approx(ref_p, abs=1e-6)


def test_rank_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    from pipeline.results.stats import auroc

    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 50), np.round(rng.random(50), 1)
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auroc(np.zeros(5), p[:5]) is None


def test_bootstrap_p_value_is_never_zero_and_is_printed_as_such():
    from pipeline.results.stats import auroc, paired_bootstrap
    from pipeline.tools.compare import _p

    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 60)
    perfect, noise = y + rng.random(120) * 0.5, rng.random(120)  # every draw favours `perfect`
    out = paired_bootstrap(auroc, y, noise, perfect, [f"P{i}" for i in range(120)], n=500)
    assert out["ci95"][0] > 0 and out["p_value"] == pytest.approx(2 / 501)
    assert _p(out["p_value"]) == "0.004" and _p(2 / 2001) == "1.0e-03" and _p(None) == "n/a"


def test_compare_names_runs_by_folder_and_tells_seed_folders_of_two_runs_apart(tmp_path):
    from pipeline.tools.compare import _distinct_names

    assert _distinct_names([tmp_path / "sum", tmp_path / "repeat"]) == ["sum", "repeat"]
    assert _distinct_names([tmp_path / "sum" / "seed_42", tmp_path / "repeat" / "seed_42"]) == \
        ["sum/seed_42", "repeat/seed_42"]


def test_compare_identical_runs_gives_zero_difference_with_zero_width_ci(seeds_run, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(seeds_run, twin, ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
    assert compare_main([str(seeds_run), str(twin), "--bootstrap", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["runs"]] == [seeds_run.name, "twin"]
    (pair,) = out["pairs"]
    assert set(pair) >= {"a", "b", "metric", "diff", "ci95", "p_value", "delong_p"}
    assert pair["diff"] == 0 and pair["ci95"] == [0.0, 0.0] and pair["p_value"] == 1.0 and pair["delong_p"] == 1.0
    oof = compare([seeds_run, twin], on="oof", n_boot=50)
    assert oof["pairs"][0]["diff"] == 0 and oof["pairs"][0]["ci95"] == [0.0, 0.0]


def test_compare_refuses_runs_with_different_test_patients(seeds_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(seeds_run, other, ignore=shutil.ignore_patterns("*.pt", "tensorboard"))
    rows = _rows(other / "test_predictions.csv")
    _write(other / "test_predictions.csv", rows[1:])  # one test image (and its patient) fewer
    assert compare_main([str(seeds_run), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test patients differ" in err
