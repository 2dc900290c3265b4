"""report.md: what a person reads after a run (tables here, figures from report_plots)."""

from __future__ import annotations

from pathlib import Path

from pipeline.vocab import METRICS, PROPORTION_METRICS

INTERVALS = ("Intervals: Wilson score 95% CI for proportions (accuracy, sensitivity, specificity, PPV, NPV), "
             "patient-bootstrap percentile 95% CI for AUROC, AUPRC, F1, balanced accuracy, Brier and ECE "
             "(and for macro averages). Wilson intervals count images; where a patient has several images "
             "the count is divided by a design effect estimated from the patient clustering (deff ≥ 1, "
             "listed in the table), so correlated images do not narrow the interval; where every image agrees "
             "(a proportion of 0 or 1) the correlation cannot be estimated and the mean number of images per "
             "patient is used (the patients are the sample).")


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def _ci(c):
    return f"{c[0]:.3f} – {c[1]:.3f}" if c else ""


def point_label(op: dict) -> str:
    """'youden', 'sensitivity ≥ 0.95', ...: how the operating point was chosen."""
    return " and ".join(f"{k} ≥ {v:g}" for k, v in op["target"].items()) if op.get("target") else op["name"]


def _set_line(name: str, m: dict) -> str:
    prev = (f", {m['n_positive']} positive (prevalence {m['prevalence']:.1%})"
            if m.get("prevalence") is not None else "")
    return f"{name}: {m['n']} images of {m.get('n_patients', '?')} patients{prev}."


def _fold_table(summary: dict, keys) -> list[str]:
    lines = ["| fold | best epoch | stage | n | " + " | ".join(keys) + " |", "|---" * (4 + len(keys)) + "|"]
    for f in summary["folds"]:
        lines.append(f"| {f['fold']} | {f['best_epoch']} | {f['stage']} | {f['n_val']} | "
                     + " | ".join(_fmt(f["metrics"].get(k)) for k in keys) + " |")
    lines.append("| mean ± sd | | | | " + " | ".join(
        f"{_fmt(summary['mean'].get(k))} ± {_fmt(summary['std'].get(k))}" for k in keys) + " |")
    o = summary["oof"]
    lines.append(f"| pooled out-of-fold | | | {o['n']} | " + " | ".join(_fmt(o.get(k)) for k in keys) + " |")
    return lines


def _confusion(summary: dict, m: dict, where: str) -> list[str]:
    kind, classes = summary["type"], summary["classes"]
    if kind == "binary":
        pos = summary["positive_class"]
        neg = next(c for c in classes if c != pos)
        return [f"{where}, threshold {summary['threshold']:.3f} (rows: truth, columns: prediction):", "",
                f"| | predicted {neg} | predicted {pos} |", "|---|---|---|",
                f"| {neg} | {m['tn']} (TN) | {m['fp']} (FP) |", f"| {pos} | {m['fn']} (FN) | {m['tp']} (TP) |"]
    if kind == "multiclass":
        lines = [f"{where}, argmax (rows: truth, columns: prediction):", "",
                 "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        return lines + [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                        for c, row in zip(classes, m["confusion_matrix"], strict=True)]
    lines = [f"{where}, threshold {summary['threshold']:.3f}, per finding:", "",
             "| finding | TP | FP | TN | FN |", "|---|---|---|---|---|"]
    for c, pc in m["per_class"].items():
        lines.append(f"| {c} | " + " | ".join(str(pc.get(k, "")) for k in ("tp", "fp", "tn", "fn")) + " |")
    return lines


def _operating_points(points) -> list[str]:
    if not points:
        return []
    lines = ["", "## Operating points", "",
             "Chosen on the pooled out-of-fold predictions, applied unchanged to the test set (Wilson 95% CI).",
             "", "| point | threshold | set | TP | FP | TN | FN | sensitivity | specificity | PPV | NPV |",
             "|---" * 11 + "|"]
    for op in points:
        for where in ("oof", "test"):
            m = op.get(where)
            if not m:
                continue
            rates = [_fmt(m[k]) + (f" ({_ci(m['ci95'][k])})" if m["ci95"].get(k) else "")
                     for k in ("sensitivity", "specificity", "ppv", "npv")]
            lines.append(f"| {point_label(op)} | {op['threshold']:.3f} | {where} | {m['tp']} | {m['fp']} | {m['tn']} | "
                         f"{m['fn']} | " + " | ".join(rates) + " |")
    return lines


def write_report(run_dir: Path, summary: dict, oof, test, cfg, tracker=None) -> None:
    keys = METRICS
    thr = ("Youden index on out-of-fold predictions" if cfg.report.threshold == "youden" else "fixed")
    lines = [
        f"# {summary['task']}: {cfg.model.backbone} ({summary['model']['stem']} stem, {cfg.model.pretrained} weights)",
        "",
        f"Input normalisation (x in [0, 1]): {summary['model']['normalization']}.",
        "",
        f"{summary['n_samples']} samples from {summary['n_patients']} patients; {len(summary['folds'])}-fold "
        f"cross-validation grouped by patient; {summary['n_skipped']} inputs skipped. Unit of analysis: "
        f"{summary['unit']}. One threshold for every threshold metric in this report and summary.json: "
        f"{summary['threshold']:.3f} ({thr}); `fold_K/result.json` keeps the training loop's own values "
        "(per frame, training-time threshold) under `metrics_at_training_threshold`.",
        "",
        "## Cross-validation (out-of-fold, per fold)",
        "",
        _set_line("Out-of-fold", summary["oof"]),
        "",
        *_fold_table(summary, keys),
    ]
    t = summary.get("test")
    if t:
        ci, method, deff = t.get("ci95", {}), t.get("ci_method", {}), t.get("design_effect", {})
        lines += ["", f"## Held-out test set (ensemble of {t.get('n_models')} fold models)", "",
                  _set_line("Test set", t), "",
                  "| metric | value | 95% CI | interval |", "|---|---|---|---|"]
        for k in keys:
            how = method.get(k, "")
            if k in PROPORTION_METRICS and k in deff:
                how += f", deff {deff[k]:.2f}"
            lines.append(f"| {k} | {_fmt(t.get(k))} | {_ci(ci.get(k))} | {how} |")
        lines += ["", INTERVALS]
    from pipeline.results.cautions import cautions

    notes = cautions(summary, [it["target"] for it in oof], [it["prob"] for it in oof])
    if notes:
        lines += ["", "## Read with care", "", *(f"- {n}" for n in notes)]
    lines += ["", "## Confusion matrix", "", *_confusion(summary, t or summary["oof"], "test" if t else "out-of-fold")]
    lines += _operating_points(summary.get("operating_points"))

    from pipeline.results.report_plots import figures

    figs = figures(summary, oof, test, cfg.report.calibration_bins)
    if figs:
        lines += ["", "## Figures"]
    for name, fig in figs.items():
        fig.savefig(run_dir / f"{name}.png", dpi=110)
        if tracker is not None:
            tracker.figure(name, fig)
        import matplotlib.pyplot as plt

        plt.close(fig)
        lines += ["", f"![{name}]({name}.png)"]
    if (run_dir / "cam_panel.png").is_file():  # pipeline.deploy.cam.report_cam_panel (report.cam_panel)
        lines += ["", "## Where the fold ensemble looks (Grad-CAM, test set)", "",
                  "Most confident correct test images per class and the most confident errors. Each title gives "
                  "the truth, the ensemble's probability named by its class (P(class) = p) and the class whose "
                  "evidence is mapped (the one the ensemble decided); colours are scaled 0-1 per image (the colour "
                  "bar), so they say where the model looks, not how sure it is. A map on a corner marker or text "
                  "instead of anatomy is a shortcut.",
                  "", "![Grad-CAM panel](cam_panel.png)"]
    lines += ["", "Files: `summary.json` (with `provenance`: package versions, git commit, manifest and config "
              "hashes, machine, wall time), `oof_predictions.csv`, `test_predictions.csv`, `splits.json`, "
              "`fold_K/best.pt`, `tensorboard/fold_K/` and `tensorboard/summary/` (`tensorboard --logdir "
              + str(run_dir / "tensorboard") + "`).", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
