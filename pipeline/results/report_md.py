"""report.md: what a person reads after a run (tables here, figures from report_plots)."""

from __future__ import annotations

from pipeline.results.data_checks import markdown as data_checks_markdown
from pipeline.results.label_issues import markdown as label_issues_markdown
from pipeline.results.report_plots import figures, point_label
from pipeline.runfolder import RunFolder
from pipeline.vocab import METRICS, PROPORTION_METRICS, TABLE_METRICS

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


def write_report(folder: RunFolder, summary: dict, oof, test, cfg, tracker=None) -> None:
    """report.md, written once from the finished summary (with its figures beside it)."""
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

    from pipeline.results import clinical_report

    lines += clinical_report.markdown(summary)
    figs = {**figures(summary, oof, test, cfg.report.calibration_bins), **clinical_report.figures(summary)}
    if figs:
        lines += ["", "## Figures"]
    for name, fig in figs.items():
        fig.savefig(folder.file(f"{name}.png"), dpi=110)
        if tracker is not None:
            tracker.figure(name, fig)
        import matplotlib.pyplot as plt

        plt.close(fig)
        lines += ["", f"![{name}]({name}.png)"]
    lines += seeds_markdown(summary).splitlines()
    lines += data_checks_markdown(summary) + label_issues_markdown(summary)
    if folder.cam_panel.is_file():  # drawn after training (report.cam_panel), before this report
        lines += ["", "## Where the fold ensemble looks (Grad-CAM, test set)", "",
                  "Most confident correct test images per class and the most confident errors. Each title gives "
                  "the truth, the ensemble's probability named by its class (P(class) = p) and the class whose "
                  "evidence is mapped (the one the ensemble decided); colours are scaled 0-1 per image (the colour "
                  "bar), so they say where the model looks, not how sure it is. A map on a corner marker or text "
                  "instead of anatomy is a shortcut.",
                  "", f"![Grad-CAM panel]({folder.CAM_PANEL})"]
    lines += ["", f"Reporting checklist (TRIPOD+AI, CLAIM) filled from this run: `{folder.CHECKLIST}`."]
    lines += ["", f"Files: `{folder.SUMMARY}` (with `provenance`: package versions, git commit, manifest and "
              f"config hashes, machine, wall time), `{folder.OOF}`, `{folder.TEST}`, `{folder.SPLITS}`, "
              f"`{folder.DEPLOYMENT}` (what predict, evaluate and export read), `fold_K/{folder.BEST}`, "
              f"`{folder.TENSORBOARD}/fold_K/` and `{folder.TENSORBOARD}/summary/` (`tensorboard --logdir "
              f"{folder.tensorboard}`).", ""]
    RunFolder.write_text(folder.report, "\n".join(lines))


def seeds_markdown(summary: dict) -> str:
    """report.md's section on repeated seeds ('' with one seed)."""
    if len(summary.get("seeds") or []) < 2:
        return ""
    keys = TABLE_METRICS
    n = len(summary["seeds"])
    lines = ["", f"## Repeated seeds ({n} training seeds, same folds)", "",
             "Top-level numbers above are the seed ensemble (out-of-fold: the mean over seeds of each image's "
             "fold models; test: every seed's fold models). Per seed, at the same threshold:", ""]
    for part, title in (("cv", "cross-validation mean over folds"), ("test", "held-out test")):
        rows = [(s["seed"], s["mean"] if part == "cv" else (s["test"] or {})) for s in summary["seeds"]]
        if not any(r for _, r in rows):
            continue
        lines += [f"{title}:", "", "| seed | " + " | ".join(keys) + " |", "|---" * (1 + len(keys)) + "|"]
        lines += [f"| {seed} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for seed, r in rows]
        m, sd = summary["seeds_mean"][part], summary["seeds_sd"][part]
        lines += ["| mean ± sd | " + " | ".join(f"{_fmt(m.get(k))} ± {_fmt(sd.get(k))}" for k in keys) + " |", ""]
    return "\n".join(lines) + "\n"


def format_seeds(summary: dict) -> str:
    """One line per part for the console: mean ± sd over seeds of AUROC (empty with one seed)."""
    if len(summary.get("seeds", [])) < 2:
        return ""
    m, sd = summary["seeds_mean"], summary["seeds_sd"]
    parts = [f"{name} AUROC {m[p]['auroc']:.3f} ± {sd[p]['auroc']:.3f}" for p, name in (("cv", "CV mean"), ("test", "test"))
             if m[p].get("auroc") is not None]
    return f"over {len(summary['seeds'])} seeds: " + "; ".join(parts)
