"""Shortcut table on manifest columns, and manifest columns passing through to the prediction files."""

import csv

import numpy as np
from scipy.stats import chi2_contingency

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.data.shortcuts import shortcut_table
from pipeline.results.report import _aggregate, _write_predictions


def _manifest(tmp_path, n=80):
    """Real PNGs; `scanner` is perfectly confounded with the label, `site` is independent of it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient_id", "scanner", "site", "age"])
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f"{k}.png")
            label = "pneumonia" if k % 2 else "normal"
            w.writerow([f"{k}.png", label, f"P{k}", "portable" if k % 2 else "fixed", ["A", "B"][(k // 2) % 2], 20 + k])
    return load_config("smoke", [f"data.manifest={tmp_path / 'labels.csv'}", "data.demo=null"])


def test_perfectly_confounded_column_is_flagged(tmp_path):
    samples = load_manifest(_manifest(tmp_path)).samples
    table = {s.column: s for s in shortcut_table(samples)}
    assert set(table) == {"scanner", "site"}  # age has 80 values: not a category
    scanner = table["scanner"]
    assert scanner.flagged and scanner.cramers_v > 0.95
    assert scanner.counts == {"fixed": {"normal": 40, "pneumonia": 0}, "portable": {"normal": 0, "pneumonia": 40}}
    chi2, p, _, _ = chi2_contingency(np.array([[40, 0], [0, 40]]))
    assert np.isclose(scanner.p, p) and np.isclose(scanner.chi2, chi2)
    assert scanner.line.startswith("scanner: fixed 100% normal vs portable 0%, p < 1e-6: a model can learn")
    assert not table["site"].flagged and table["site"].p > 0.5


def test_manifest_columns_reach_prediction_files(tmp_path):
    cfg = _manifest(tmp_path, n=6)
    samples = load_manifest(cfg).samples
    assert samples[3].extra == (("scanner", "portable"), ("site", "B"), ("age", "23"))
    items = _aggregate(samples, list(range(6)), [np.array([0.3]) for _ in range(6)], [0, 1, 0, 1, 0, 1])
    _write_predictions(tmp_path / "oof.csv", items, cfg.task, with_fold=True)
    _write_predictions(tmp_path / "test.csv", items, cfg.task, with_fold=False)
    for name in ("oof.csv", "test.csv"):
        rows = list(csv.DictReader((tmp_path / name).open()))
        assert [(r["scanner"], r["site"], r["age"]) for r in rows[:4]] == [
            ("fixed", "A", "20"), ("portable", "A", "21"), ("fixed", "B", "22"), ("portable", "B", "23")]
