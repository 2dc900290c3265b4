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

from .metrics import bootstrap_ci, compute_metrics, youden_threshold
from .outputs import class_matrix, probability_fields
from .tracking import Tags
from .vocab import METRICS, TABLE_METRICS


def _aggregate(samples, indices, probs, fold_of=None):
    """Average probabilities over the samples (frames) of one image file."""
    groups: dict[str, list[int]] = {}
    for j, i in enumerate(indices):
        groups.setdefault(samples[i].image, []).append(j)
    out = []
    for js in groups.values():
        s = samples[indices[js[0]]]
        out.append({"image": s.image_text, "patient_id": s.patient_id, "label": s.label, "target": s.target,
                    "frames": len(js), "fold": None if fold_of is None else fold_of[js[0]],
                    "prob": np.mean([probs[j] for j in js], axis=0)})
    return out


def fold_ensemble(tests: list[dict]) -> tuple[list[int], np.ndarray]:
    """Mean probability of the fold models per test sample, matched by sample index (not by position)."""
    by_index: dict[int, list] = {}
    for t in tests:
        for i, p in zip(t["indices"], t["probs"], strict=True):
            by_index.setdefault(i, []).append(p)
    if any(len(v) != len(tests) for v in by_index.values()):
        raise ValueError("fold models scored different test samples")
    idx = sorted(by_index)
    return idx, np.array([np.mean(by_index[i], axis=0) for i in idx])


def _arrays(items, task_type):
    y = np.array([it["target"] for it in items], dtype=float)
    p = np.array([it["prob"] for it in items], dtype=float)
    if task_type != "multilabel":
        y = y.astype(int)
    return y, p


def _write_predictions(path: Path, items, task, with_fold: bool):
    probs = class_matrix(task, [it["prob"] for it in items])
    fields = ["image", "patient_id"] + (["fold"] if with_fold else []) + ["frames", "label"]
    if task.type == "multilabel":
        fields += [f"label_{c}" for c in task.classes]
    fields += probability_fields(task)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for it, pr in zip(items, probs, strict=True):
            row = [it["image"], it["patient_id"]] + ([it["fold"]] if with_fold else []) + [it["frames"], it["label"]]
            if task.type == "multilabel":
                row += ["" if np.isnan(v) else int(v) for v in it["target"]]
            row += [f"{v:.6f}" for v in pr]
            w.writerow(row)


def _mean_std(fold_metrics: list[dict]):
    mean, std = {}, {}
    for k in METRICS:
        vals = [m[k] for m in fold_metrics if m.get(k) is not None]
        if vals:
            mean[k], std[k] = float(np.mean(vals)), float(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    return mean, std


def write_outputs(cfg, run_dir: Path, prep, results, tracker) -> dict:
    task, rows = cfg.task, prep.decoded.samples
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
        idx, probs = fold_ensemble(tests)
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
        "n_samples": len(rows), "n_patients": len({r.patient_id for r in rows}),
        "n_skipped": len(prep.skipped), "patient_source": prep.manifest.patient_source,
        "model": {"backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
                  "stem": results[0].get("stem_strategy", cfg.model.stem) if results else cfg.model.stem,
                  "normalization": results[0].get("normalization") if results else None},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for k, v in mean.items():
        tracker.scalar(Tags.cv_mean(k), v, 0)
    if test_summary:
        for k in METRICS:
            tracker.scalar(Tags.test(k), test_summary.get(k), 0)
    if cfg.report.cam_panel and tests:  # TODO(issue 12): and not when tracking.log_images is false
        _cam_panel(run_dir)
    from .report_md import write_report

    write_report(run_dir, summary, oof, test if tests else None, cfg)
    return summary


def _cam_panel(run_dir: Path) -> None:
    """Grad-CAM panel for report.md; a failure here costs the picture, never the finished run."""
    from .cam import report_cam_panel
    from .tracking import log

    try:
        report_cam_panel(run_dir)
    except Exception as exc:  # the run's results are already written
        log.warning(f"grad-cam panel not drawn: {type(exc).__name__}: {exc}")


def format_table(summary: dict) -> str:
    keys = TABLE_METRICS
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
