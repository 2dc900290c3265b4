"""The evaluation blocks a clinical reviewer asks for, computed for a run and for `graystem evaluate`:
calibration (temperature scaling), subgroups, decision curves, conformal prediction sets and the fold ensemble's
spread per case. Each computation lives in its own module; this one feeds them the run's predictions and returns
summary.json blocks (plain dicts), nothing else.
"""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np

from pipeline.model.outputs import class_matrix
from pipeline.results import calibration, conformal, decision_curve, subgroups
from pipeline.results.records import FoldResult, Scores
from pipeline.runfolder import RunFolder


def _targets(samples, indices, task_type) -> np.ndarray:
    y = np.array([samples[i].target for i in indices], dtype=float)
    return y if task_type == "multilabel" else y.astype(int)


def calibrate(cfg, samples, per_seed: dict[int, list[FoldResult]]) -> tuple[list[float] | None, dict]:
    """(temperature or None, every seed's fold results with each validation and test probability rescaled).
    Fitted on the pooled out-of-fold predictions per sample (frame) of every seed's fold models, and applied to
    each model's own probabilities before any averaging, as the fold ensemble divides each member's logits."""
    runs = [r for results in per_seed.values() for r in results]
    if cfg.report.calibrate == "none" or not runs:
        return None, per_seed
    kind = cfg.task.type
    idx = [i for r in runs for i in r.val.indices]
    probs = np.array([p for r in runs for p in r.val.probs], dtype=float)
    t = calibration.fit_temperature(kind, calibration.logits_from_probs(kind, probs), _targets(samples, idx, kind))

    def scaled(scores: Scores | None) -> Scores | None:
        if scores is None:
            return None
        return Scores.of(scores.indices, calibration.apply_temperature(kind, scores.probs, t), scores.n_models)

    return t, {s: [replace(r, val=scaled(r.val), test=scaled(r.test)) for r in results]
               for s, results in per_seed.items()}


def _arrays(items, task_type):
    y = np.array([it["target"] for it in items], dtype=float)
    return (y if task_type == "multilabel" else y.astype(int)), np.array([it["prob"] for it in items], dtype=float)


def calibration_block(cfg, temperature, before: dict[str, list], after: dict[str, list]) -> dict:
    """summary.json `calibration`: the temperature and ECE / Brier / reliability bins before and after, per set."""
    kind, bins = cfg.task.type, cfg.report.calibration_bins
    out = {"method": cfg.report.calibrate, "temperature": temperature,
           "fitted_on": "pooled out-of-fold logits" if temperature else None}
    for where in before:
        if before[where]:
            out[where] = {"before": calibration.calibration_stats(kind, *_arrays(before[where], kind), bins),
                          "after": calibration.calibration_stats(kind, *_arrays(after[where], kind), bins)}
    return out


def test_spread(samples, results: list[FoldResult], task) -> dict[str, list[float]]:
    """{image as written: (C,) standard deviation of the fold models' (calibrated) test probabilities}; frames
    of one file are averaged per model first, as the ensemble averages them."""
    per_model = []
    for t in (r.test for r in results if r.test is not None):
        by_image: dict[str, list] = {}
        for i, p in zip(t.indices, class_matrix(task, list(t.probs)), strict=True):
            by_image.setdefault(samples[i].image_text, []).append(p)
        per_model.append({k: np.mean(v, 0) for k, v in by_image.items()})
    images = per_model[0].keys() if per_model else []
    return {k: conformal.member_spread([m[k] for m in per_model]).tolist() for k in images}


def with_spread(outcome, samples, results: list[FoldResult], task):
    """The outcome with each test item's 'sd' (written as sd_<class> columns of test_predictions.csv)."""
    if not outcome.test:
        return outcome
    spread = test_spread(samples, results, task)
    return replace(outcome, test=[{**it, "sd": spread[it["image"]]} for it in outcome.test])


def raw_items(samples, results: list[FoldResult]) -> dict:
    """Out-of-fold and fold-ensemble test items of uncalibrated results (the 'before' of the calibration)."""
    from pipeline.results.report import _aggregate

    oof = _aggregate(samples, [i for r in results for i in r.val.indices], [p for r in results for p in r.val.probs])
    tests = [r.test for r in results if r.test is not None]
    if not tests:
        return {"oof": oof, "test": None}
    ens = Scores.mean_by_index(tests, complete=True)
    return {"oof": oof, "test": _aggregate(samples, list(ens.indices), [np.asarray(p) for p in ens.probs])}


def _conformal(cfg, cal_items, items_by_set: dict[str, list], threshold: float) -> dict | None:
    task = cfg.task
    if task.type == "multilabel" or not cal_items:
        return None
    alpha = cfg.report.conformal_alpha
    cal_p = class_matrix(task, [it["prob"] for it in cal_items])
    cal_y = conformal.class_index(task, [it["target"] for it in cal_items])
    out = {"alpha": alpha, "calibration_set": f"pooled out-of-fold predictions ({len(cal_items)} images)"}
    for where, items in items_by_set.items():
        if not items:
            continue
        p = class_matrix(task, [it["prob"] for it in items])
        y = conformal.class_index(task, [it["target"] for it in items])
        sets = conformal.prediction_sets(cal_p, cal_y, p, alpha)
        yt, pt = _arrays(items, task.type)
        out[where] = {**conformal.set_summary(sets, y),
                      "abstention": conformal.abstention_curve(task.type, yt, pt, threshold)}
    return out


def _decision_curves(cfg, items_by_set: dict[str, list]) -> dict | None:
    if cfg.task.type != "binary":
        return None
    out = {}
    for where, items in items_by_set.items():
        if items:
            y, p = _arrays(items, "binary")
            curve = decision_curve.decision_curve(y, p)
            out[where] = {**curve, "useful_ranges": decision_curve.useful_ranges(curve)}
    return out


def _subgroups(cfg, samples, items_by_set: dict[str, list], threshold: float) -> dict | None:
    names = list(cfg.report.subgroups)
    if not names:
        return None
    attrs = subgroups.attributes(names, samples, subgroups.manifest_records(cfg, names))
    out = {"attributes": names, "min_n": cfg.report.subgroup_min_n}
    for where, items in items_by_set.items():
        if items:
            out[where] = subgroups.subgroup_table(cfg.task.type, cfg.task.classes, items, attrs, names, threshold,
                                                  cfg.report.subgroup_min_n, cfg.report.bootstrap, cfg.cv.seed)
    return out


def run_blocks(cfg, samples, threshold: float, temperature, raw: dict[str, list], calibrated: dict[str, list]) -> dict:
    """summary.json's calibration, subgroups, decision_curve and conformal blocks of a run: `raw` and
    `calibrated` are {'oof': items, 'test': items or None} before and after the temperature."""
    sets = {k: v for k, v in calibrated.items() if v}
    return {"calibration": calibration_block(cfg, temperature, raw, calibrated),
            "subgroups": _subgroups(cfg, samples, sets, threshold),
            "decision_curve": _decision_curves(cfg, sets),
            "conformal": _conformal(cfg, calibrated.get("oof"), sets, threshold)}


def oof_items_of_run(folder: RunFolder, task) -> list[dict]:
    """The run's calibrated out-of-fold predictions back from oof_predictions.csv (conformal calibration set)."""
    path = folder.oof_predictions
    if not path.is_file() or task.type == "multilabel":
        return []
    items = []
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec["label"] not in task.classes:
                continue
            probs = np.array([float(rec[f"prob_{c}"]) for c in task.classes])
            if task.type == "binary":
                items.append({"target": int(rec["label"] == task.positive),
                              "prob": probs[task.classes.index(task.positive)]})
            else:
                items.append({"target": task.classes.index(rec["label"]), "prob": probs})
    return items


def evaluate_blocks(cfg, run, samples, items) -> dict:
    """The same blocks for an external set scored by the (already calibrated) fold ensemble."""
    sets = {"external": items}
    kind, bins = cfg.task.type, cfg.report.calibration_bins
    t = run.deployment.temperature
    return {"calibration": {"method": "temperature" if t is not None else "none",
                            "temperature": None if t is None else np.atleast_1d(t).tolist(),
                            "fitted_on": "the run's pooled out-of-fold logits (not refitted here)",
                            "external": {"after": calibration.calibration_stats(kind, *_arrays(items, kind), bins)}},
            "subgroups": _subgroups(cfg, samples, sets, run.threshold),
            "decision_curve": _decision_curves(cfg, sets),
            "conformal": _conformal(cfg, oof_items_of_run(run.folder, run.task), sets, run.threshold)}
