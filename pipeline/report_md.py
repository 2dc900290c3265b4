"""report.md and its PNG plots (ROC curves, reliability diagram): what a person reads after a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .vocab import METRICS


def _plots(run_dir: Path, oof, test, task_type: str, classes, bins: int, positive=None) -> list[str]:
    """ROC and reliability diagram of the binary task, out-of-fold and test curves on the same axes."""
    if task_type != "binary":
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    curves = []
    for name, items in (("out-of-fold", oof), ("test (fold ensemble)", test)):
        y = np.array([it["target"] for it in items or []], dtype=int)
        if len(set(y)) == 2:
            curves.append((name, y, np.array([it["prob"] for it in items], dtype=float)))
    negative = next(c for c in classes if c != positive)
    figures = {
        "roc.png": (lambda y, p: roc_curve(y, p)[:2], "1 - specificity", "sensitivity",
                    f"ROC ({positive} vs {negative})", "lower right", "-"),
        "calibration.png": (lambda y, p: calibration_curve(y, p, n_bins=bins, strategy="uniform")[::-1],
                            "predicted probability", "observed frequency", "Calibration", "upper left", "o-"),
    }
    for png, (xy, xlabel, ylabel, title, legend, style) in figures.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, y, p in curves:
            ax.plot(*xy(y, p), style, label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if curves:
            ax.legend(loc=legend)
        fig.tight_layout()
        fig.savefig(run_dir / png, dpi=110)
        plt.close(fig)
    return list(figures)


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def write_report(run_dir: Path, summary: dict, oof, test, cfg) -> None:
    keys = METRICS
    lines = [
        f"# {summary['task']}: {cfg.model.backbone} ({summary['model']['stem']} stem, {cfg.model.pretrained} weights)",
        "",
        f"Input normalisation (x in [0, 1]): {summary['model']['normalization']}.",
        "",
        f"{summary['n_samples']} samples from {summary['n_patients']} patients; {len(summary['folds'])}-fold "
        f"cross-validation grouped by patient; {summary['n_skipped']} inputs skipped. Unit of analysis: "
        f"{summary['unit']}. Threshold for sensitivity/specificity/F1: {summary['threshold']:.3f} "
        f"({'Youden index on out-of-fold predictions' if cfg.report.threshold == 'youden' else 'fixed'}).",
        "",
        "## Cross-validation (out-of-fold, per fold)",
        "",
        "| fold | best epoch | stage | n | " + " | ".join(keys) + " |",
        "|---" * (4 + len(keys)) + "|",
    ]
    for f in summary["folds"]:
        lines.append(f"| {f['fold']} | {f['best_epoch']} | {f['stage']} | {f['n_val']} | "
                     + " | ".join(_fmt(f["metrics"].get(k)) for k in keys) + " |")
    lines.append("| mean ± sd | | | | " + " | ".join(
        f"{_fmt(summary['mean'].get(k))} ± {_fmt(summary['std'].get(k))}" for k in keys) + " |")
    t = summary.get("test")
    if t:
        ci = t.get("ci95", {})
        lines += ["", f"## Held-out test set (ensemble of {t.get('n_models')} fold models)", "",
                  "| metric | value | 95% CI (patient bootstrap) |", "|---|---|---|"]
        for k in keys:
            c = ci.get(k)
            lines.append(f"| {k} | {_fmt(t.get(k))} | {f'{c[0]:.3f} – {c[1]:.3f}' if c else ''} |")
    for png in _plots(run_dir, oof, test, summary["type"], summary["classes"], cfg.report.calibration_bins,
                      summary.get("positive_class")):
        lines += ["", f"![{png[:-4]}]({png})"]
    if (run_dir / "cam_panel.png").is_file():  # pipeline.cam.report_cam_panel (report.cam_panel)
        lines += ["", "## Where the fold ensemble looks (Grad-CAM, test set)", "",
                  "Most confident correct test images per class and the most confident errors; each map is of the "
                  "class the ensemble decided. A map on a corner marker or text instead of anatomy is a shortcut.",
                  "", "![Grad-CAM panel](cam_panel.png)"]
    lines += ["", "Files: `summary.json`, `oof_predictions.csv`, `test_predictions.csv`, `splits.json`, "
              "`fold_K/best.pt`, `tensorboard/` (`tensorboard --logdir " + str(run_dir / "tensorboard") + "`).", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
