"""Run outputs: oof/test prediction CSVs, summary.json, report.md with ROC and calibration plots.

Fold metrics are recomputed from the saved out-of-fold predictions (not taken from the training loop) so the
operating point is the same for every number in the report. When frames or slices were expanded into
samples, predictions are averaged per image file (the exam is the clinical unit) before scoring.
fold_K/result.json keeps the training loop's own validation metrics under `metrics_at_training_threshold`
(per frame, at the training-time threshold; they chose the best epoch); every fold number in summary.json
and report.md is at the run's one threshold.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.model.outputs import class_matrix, probability_fields
from pipeline.results.metrics import (
    binary_metrics,
    compute_metrics,
    confidence_intervals,
    proportion_cis,
    threshold_for,
    youden_threshold,
)
from pipeline.results.provenance import provenance
from pipeline.results.records import FoldResult, Scores, Summary
from pipeline.results.tracking import Tags
from pipeline.runfolder import RunFolder
from pipeline.vocab import METRICS, TABLE_METRICS

POINT_KEYS = ("tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv")


def _aggregate(samples, indices, probs, fold_of=None):
    """Average probabilities over the samples (frames) of one image file."""
    groups: dict[str, list[int]] = {}
    for j, i in enumerate(indices):
        groups.setdefault(samples[i].image, []).append(j)
    out = []
    for js in groups.values():
        s = samples[indices[js[0]]]
        out.append({"image": s.image_text, "patient_id": s.patient_id, "label": s.label, "target": s.target,
                    "frames": len(js), "fold": None if fold_of is None else fold_of[js[0]], "extra": dict(s.extra),
                    "prob": np.mean([probs[j] for j in js], axis=0)})
    return out


def _arrays(items, task_type):
    y = np.array([it["target"] for it in items], dtype=float)
    p = np.array([it["prob"] for it in items], dtype=float)
    if task_type != "multilabel":
        y = y.astype(int)
    return y, p


def _write_predictions(path: Path, items, task, with_fold: bool, predicted: list[str] | None = None):
    """One row per image; `predicted` (the decision at the run's threshold) adds a column, and items with an
    'sd' (the fold models' spread per class, pipeline.results.clinical) add sd_<class> columns."""
    probs = class_matrix(task, [it["prob"] for it in items])
    spread = bool(items) and all("sd" in it for it in items)
    fields = ["image", "patient_id"] + (["fold"] if with_fold else []) + ["frames", "label"]
    extra = list(dict.fromkeys(c for it in items for c in it.get("extra", {})))  # the manifest's other columns
    fields += extra
    if task.type == "multilabel":
        fields += [f"label_{c}" for c in task.classes]
    fields += probability_fields(task) + (["predicted"] if predicted is not None else [])
    fields += [f"sd_{c}" for c in task.classes] if spread else []
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(fields)
        for j, (it, pr) in enumerate(zip(items, probs, strict=True)):
            row = [it["image"], it["patient_id"]] + ([it["fold"]] if with_fold else []) + [it["frames"], it["label"]]
            row += [it.get("extra", {}).get(c, "") for c in extra]
            if task.type == "multilabel":
                row += ["" if np.isnan(v) else int(v) for v in it["target"]]
            row += [f"{v:.6f}" for v in pr] + ([predicted[j]] if predicted is not None else [])
            row += [f"{v:.6f}" for v in it["sd"]] if spread else []
            w.writerow(row)


def score_items(cfg, items, threshold: float, n_models: int) -> dict:
    """summary.json's `test` block for scored images (`_aggregate` items): metrics at the given threshold, the
    patient-bootstrap ci95 and the number of models. write_outputs and `graystem evaluate` both use it, so an
    external set's block has exactly the shape and the computation of the run's own test block."""
    task, bins = cfg.task, cfg.report.calibration_bins
    y, p = _arrays(items, task.type)
    block = compute_metrics(task.type, y, p, task.classes, threshold, bins)
    patients = [it["patient_id"] for it in items]
    ci, method, deff = confidence_intervals(task.type, y, p, task.classes, patients, threshold,
                                            n=cfg.report.bootstrap, seed=cfg.cv.seed, bins=bins)
    # a seed ensemble counts every seed's fold models
    block.update(ci95=ci, ci_method=method, design_effect=deff, n_models=n_models, n_patients=len(set(patients)))
    return block


def mean_sd(fold_metrics: list[dict]) -> tuple[dict, dict]:
    """Mean and sample sd of every metric over folds (or seeds); metrics that are None are left out."""
    mean, std = {}, {}
    for k in METRICS:
        vals = [m[k] for m in fold_metrics if m.get(k) is not None]
        if vals:
            mean[k], std[k] = float(np.mean(vals)), float(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
    return mean, std


def _point(y, p, patients, threshold) -> dict:
    """Confusion counts and rates at one threshold, with Wilson intervals of the rates."""
    m = binary_metrics(y, p, threshold)
    ci = proportion_cis("binary", y, p, patients, threshold)
    ci.pop("deff")
    return {**{k: m[k] for k in POINT_KEYS}, "ci95": {k: v for k, v in ci.items() if k != "accuracy"}}


def operating_points(cfg, threshold, oof, test) -> list[dict]:
    """Binary tasks: the run's threshold (Youden or fixed) and the thresholds reaching the target sensitivity
    and specificity, all chosen on the pooled out-of-fold predictions, then applied unchanged to the test set."""
    y, p = _arrays(oof, "binary")
    rep = cfg.report
    candidates = [("youden" if rep.threshold == "youden" else "fixed", threshold, None)]
    if rep.target_sensitivity is not None:
        candidates.append(("target_sensitivity",
                           threshold_for(y, p, sensitivity=rep.target_sensitivity),
                           {"sensitivity": rep.target_sensitivity}))
    if rep.target_specificity is not None:
        candidates.append(("target_specificity",
                           threshold_for(y, p, specificity=rep.target_specificity),
                           {"specificity": rep.target_specificity}))
    points = []
    for name, t, target in candidates:
        if t is None:
            continue
        pt = {"name": name, "threshold": t, "chosen_on": "oof", "target": target,
              "oof": _point(y, p, [it["patient_id"] for it in oof], t), "test": None}
        if test:
            yt, pt_ = _arrays(test, "binary")
            pt["test"] = _point(yt, pt_, [it["patient_id"] for it in test], t)
        points.append(pt)
    return points


def _hparams(cfg, summary) -> tuple[dict, dict]:
    """The knobs that the HParams tab compares across runs, and the results beside them."""
    h = {"backbone": cfg.model.backbone, "stem": str(summary["model"]["stem"]), "pretrained": cfg.model.pretrained,
         "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size, "seed": cfg.train.seed,
         "folds": cfg.cv.folds}
    for st in cfg.train.stages:
        h[f"{st.name}_lr"], h[f"{st.name}_epochs"], h[f"{st.name}_train"] = st.lr, st.epochs, st.train
    m = {f"cv_mean_{k}": summary["mean"].get(k) for k in ("auroc", "auprc", "balanced_accuracy")}
    m["oof_auroc"] = summary["oof"].get("auroc")
    for k in ("auroc", "auprc", "sensitivity", "specificity") if summary.get("test") else ():
        m[f"test_{k}"] = summary["test"].get(k)
    return h, m


@dataclass(frozen=True)
class Outcome:
    """A run's results before anything is written: the summary and the per-image rows it was computed from."""

    summary: Summary
    oof: list  # `_aggregate` items (one per image file)
    test: list | None


def summarize(cfg, prep, results: list[FoldResult], started: float | None = None,
              threshold: float | None = None) -> Outcome:
    """Fold metrics, pooled out-of-fold and fold-ensemble test metrics at one threshold (chosen here on the
    out-of-fold predictions unless given); computes, writes nothing."""
    task, rows = cfg.task, prep.decoded.samples
    oof_idx, oof_probs, oof_fold = [], [], []
    for res in results:
        oof_idx += list(res.val.indices)
        oof_probs += list(res.val.probs)
        oof_fold += [res.fold] * len(res.val.indices)
    oof = _aggregate(rows, oof_idx, oof_probs, oof_fold)
    y_oof, p_oof = _arrays(oof, task.type)

    if threshold is None:
        threshold = cfg.report.threshold
        if threshold == "youden":
            threshold = youden_threshold(y_oof, p_oof) if task.type == "binary" else 0.5
    bins = cfg.report.calibration_bins

    folds = []
    for res in results:
        sel = [i for i, it in enumerate(oof) if it["fold"] == res.fold]
        m = compute_metrics(task.type, y_oof[sel], p_oof[sel], task.classes, threshold, bins)
        folds.append({"fold": res.fold, "metrics": m, "best_epoch": res.best_epoch, "stage": res.stage,
                      "n_val": len(sel), "n_val_patients": len({oof[i]["patient_id"] for i in sel})})
    mean, std = mean_sd([f["metrics"] for f in folds])
    pooled = compute_metrics(task.type, y_oof, p_oof, task.classes, threshold, bins)
    pooled["n_patients"] = len({it["patient_id"] for it in oof})

    test_summary, test = None, None
    tests = [r.test for r in results if r.test is not None]
    if tests:
        # fold ensemble: mean probability of the fold models on the held-out patients
        ens = Scores.mean_by_index(tests, complete=True)
        test = _aggregate(rows, list(ens.indices), [np.asarray(p) for p in ens.probs])
        test_summary = score_items(cfg, test, threshold, ens.n_models)

    summary = Summary(
        task=task.name, type=task.type, classes=list(task.classes),
        positive_class=task.positive if task.type == "binary" else None,
        threshold=float(threshold), unit="image (frames averaged)" if len(oof) < len(oof_idx) else "image",
        folds=folds, mean=mean, std=std, oof=pooled, test=test_summary,
        operating_points=operating_points(cfg, threshold, oof, test) if task.type == "binary" else [],
        n_samples=len(rows), n_patients=len({r.patient_id for r in rows}),
        n_skipped=len(prep.skipped), patient_source=prep.manifest.patient_source,
        model={"backbone": cfg.model.backbone, "pretrained": cfg.model.pretrained,
               "stem": results[0].stem_strategy or cfg.model.stem if results else cfg.model.stem,
               "normalization": results[0].normalization if results else None},
        provenance=provenance(cfg, prep.manifest.path, started, {r.fold: r.seconds for r in results}),
    )
    return Outcome(summary, oof, test)


def write_predictions(folder: RunFolder, outcome: Outcome, task) -> None:
    _write_predictions(folder.oof_predictions, outcome.oof, task, with_fold=True)
    if outcome.test:
        _write_predictions(folder.test_predictions, outcome.test, task, with_fold=False)


def write_summary(folder: RunFolder, summary: Summary) -> None:
    RunFolder.write_json(folder.summary, summary.to_json())


def track_summary(cfg, summary: Summary, tracker) -> None:
    """The run's scalars and HParams entry in TensorBoard."""
    for k, v in summary.mean.items():
        tracker.scalar(Tags.cv_mean(k), v, 0)
    if summary.test:
        for k in METRICS:
            tracker.scalar(Tags.test(k), summary.test.get(k), 0)
    tracker.hparams(*_hparams(cfg, summary.to_json()))
    from pipeline.results.clinical_report import log_scalars  # imports report (for its tables): no cycle here

    log_scalars(tracker, summary.to_json())


def format_table(summary: dict) -> str:
    keys = TABLE_METRICS
    widths = [max(len(k), 6) for k in keys]  # whole column names: `balanced_accuracy`, not `balanced_`
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731

    def row(head: str, values) -> str:
        return f"{head:>4}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, widths, strict=True))

    lines = [row("fold", keys)]
    for f in summary["folds"]:
        lines.append(row(str(f["fold"]), [fmt(f["metrics"].get(k)) for k in keys]))
    for head, block in (("mean", summary["mean"]), ("std", summary["std"]), ("oof", summary["oof"])):
        lines.append(row(head, [fmt(block.get(k)) for k in keys]))
    t = summary.get("test")
    if t:
        lines.append(row("test", [fmt(t.get(k)) for k in keys]))
        prev = f", {t['n_positive']} positive (prevalence {t['prevalence']:.1%})" if t.get("prevalence") else ""
        lines.append(f"test set: {t['n']} images of {t.get('n_patients')} patients{prev}; "
                     f"threshold {summary['threshold']:.3f}")
        ci = t.get("ci95", {}).get("auroc")
        if ci:
            lines.append(f"test AUROC 95% CI (patient bootstrap): {ci[0]:.3f} - {ci[1]:.3f}")
    return "\n".join(lines)
