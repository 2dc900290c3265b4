"""Run outputs: oof/test prediction CSVs, summary.json, report.md with ROC and calibration plots.

Fold metrics are recomputed from the saved out-of-fold predictions (not taken from the training loop) so the
operating point is the same for every number in the report. When frames or slices were expanded into
samples, predictions are averaged per image file (the exam is the clinical unit) before scoring.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .metrics import HEADLINE, bootstrap_ci, compute_metrics, youden_threshold


def _aggregate(rows, indices, probs, fold_of=None):
    """Average probabilities over the samples (frames) of one image file."""
    groups: dict[str, list[int]] = {}
    for j, i in enumerate(indices):
        groups.setdefault(rows[i]["image"], []).append(j)
    out = []
    for image, js in groups.items():
        r = rows[indices[js[0]]]
        out.append({"image": r.get("image_text", image), "patient_id": r["patient_id"], "label": r["label"], "target": r["target"],
                    "frames": len(js), "fold": None if fold_of is None else fold_of[js[0]],
                    "prob": np.mean([probs[j] for j in js], axis=0)})
    return out


def _arrays(items, task_type):
    y = np.array([it["target"] for it in items], dtype=float)
    p = np.array([it["prob"] for it in items], dtype=float)
    if task_type != "multilabel":
        y = y.astype(int)
    return y, p


def _write_predictions(path: Path, items, task, with_fold: bool):
    classes, task_type = task.classes, task.type
    if task_type == "binary":  # the model scores the positive class; one column per class, in class order
        probs = [[float(it["prob"]) if c == task.positive else 1 - float(it["prob"]) for c in classes]
                 for it in items]
    else:
        probs = [np.atleast_1d(it["prob"]) for it in items]
    fields = ["image", "patient_id"] + (["fold"] if with_fold else []) + ["frames", "label"]
    if task_type == "multilabel":
        fields += [f"label_{c}" for c in classes]
    fields += [f"prob_{c}" for c in classes]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for it, pr in zip(items, probs, strict=True):
            row = [it["image"], it["patient_id"]] + ([it["fold"]] if with_fold else []) + [it["frames"], it["label"]]
            if task_type == "multilabel":
                row += ["" if np.isnan(v) else int(v) for v in it["target"]]
            row += [f"{v:.6f}" for v in pr]
            w.writerow(row)


def _mean_std(fold_metrics: list[dict]):
    mean, std = {}, {}
    for k in HEADLINE:
        vals = [m[k] for m in fold_metrics if m.get(k) is not None]
        if vals:
            mean[k], std[k] = float(np.mean(vals)), float(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    return mean, std


def write_outputs(cfg, run_dir: Path, manifest, splits, results, tracker) -> dict:
    task, rows = cfg.task, manifest.rows
    oof_idx, oof_probs, oof_fold = [], [], []
    for res in results:
        oof_idx += res["val"]["indices"]
        oof_probs += res["val"]["probs"]
        oof_fold += [res["fold"]] * len(res["val"]["indices"])
    oof = _aggregate(rows, oof_idx, oof_probs, oof_fold)
    y_oof, p_oof = _arrays(oof, task.type)

    threshold = cfg.report.threshold
    if threshold == "youden":
        threshold = youden_threshold(y_oof, p_oof) if task.type == "binary" else 0.5
    bins = cfg.report.calibration_bins

    folds = []
    for res in results:
        sel = [i for i, it in enumerate(oof) if it["fold"] == res["fold"]]
        m = compute_metrics(task.type, y_oof[sel], p_oof[sel], task.classes, threshold, bins)
        folds.append({"fold": res["fold"], "metrics": m, "best_epoch": res["best_epoch"], "stage": res["stage"],
                      "n_val": len(sel)})
    mean, std = _mean_std([f["metrics"] for f in folds])
    pooled = compute_metrics(task.type, y_oof, p_oof, task.classes, threshold, bins)
    _write_predictions(run_dir / "oof_predictions.csv", oof, task, with_fold=True)

    test_summary = None
    tests = [r["test"] for r in results if r.get("test")]
    if tests:
        # fold ensemble: mean probability of the fold models on the held-out patients
        idx = tests[0]["indices"]
        probs = np.mean([np.asarray(t["probs"]) for t in tests], axis=0)
        test = _aggregate(rows, idx, list(probs))
        y_t, p_t = _arrays(test, task.type)
        test_summary = compute_metrics(task.type, y_t, p_t, task.classes, threshold, bins)
        test_summary["ci95"] = bootstrap_ci(task.type, y_t, p_t, task.classes, [t["patient_id"] for t in test],
                                            threshold, n=cfg.report.bootstrap, seed=cfg.cv.seed, bins=bins)
        test_summary["n_models"] = len(tests)
        _write_predictions(run_dir / "test_predictions.csv", test, task, with_fold=False)

    summary = {
        "task": task.name, "type": task.type, "classes": task.classes,
        "positive_class": task.positive if task.type == "binary" else None,
        "threshold": threshold, "unit": "image (frames averaged)" if len(oof) < len(oof_idx) else "image",
        "folds": folds, "mean": mean, "std": std, "oof": pooled, "test": test_summary,
        "n_samples": len(rows), "n_patients": len({r["patient_id"] for r in rows}),
        "n_skipped": len(manifest.skipped), "patient_source": manifest.patient_source,
        "model": {"backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
                  "stem": results[0].get("stem_strategy", cfg.model.stem) if results else cfg.model.stem,
                  "normalization": results[0].get("normalization") if results else None},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for k, v in mean.items():
        tracker.scalar(f"summary/cv_mean_{k}", v, 0)
    if test_summary:
        for k in HEADLINE:
            tracker.scalar(f"summary/test_{k}", test_summary.get(k), 0)
    from .report_md import write_report

    write_report(run_dir, summary, oof, test if tests else None, cfg)
    return summary


def format_table(summary: dict) -> str:
    keys = ["auroc", "auprc", "balanced_accuracy", "sensitivity", "specificity", "brier"]
    fmt = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
    lines = ["fold  " + "  ".join(f"{k[:9]:>9}" for k in keys)]
    for f in summary["folds"]:
        lines.append(f"{f['fold']:>4}  " + "  ".join(f"{fmt(f['metrics'].get(k)):>9}" for k in keys))
    lines.append("mean  " + "  ".join(f"{fmt(summary['mean'].get(k)):>9}" for k in keys))
    lines.append(" std  " + "  ".join(f"{fmt(summary['std'].get(k)):>9}" for k in keys))
    t = summary.get("test")
    if t:
        lines.append("test  " + "  ".join(f"{fmt(t.get(k)):>9}" for k in keys))
        ci = t.get("ci95", {}).get("auroc")
        if ci:
            lines.append(f"test AUROC 95% CI (patient bootstrap): {ci[0]:.3f} - {ci[1]:.3f}")
    return "\n".join(lines)
