"""The report's figures (matplotlib, headless): ROC with AUC in the legend, each fold's out-of-fold curve and the
operating points; a reliability diagram with the bin counts below it; confusion matrices; one-vs-rest ROC per
class or finding. `figures()` returns {name: Figure}; report_md saves them as PNGs and TensorBoard shows them.
"""

from __future__ import annotations

import numpy as np

MARKERS = ("o", "s", "^", "D")


def point_label(op: dict) -> str:
    """'youden', 'sensitivity ≥ 0.95', ...: how the operating point was chosen."""
    return " and ".join(f"{k} ≥ {v:g}" for k, v in op["target"].items()) if op.get("target") else op["name"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _arrays(items, task_type):
    y = np.array([it["target"] for it in items], dtype=float)
    p = np.array([it["prob"] for it in items], dtype=float)
    return (y if task_type == "multilabel" else y.astype(int)), p


def _auc(y, p):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, p) if len(set(y.tolist())) == 2 else None


def roc_binary(oof, test, points, positive, negative, test_name="test (fold ensemble)"):
    """Pooled out-of-fold and test ROC (AUC in the legend), each fold's out-of-fold ROC as a thin line, and the
    operating points marked where they fall on the test curve (on the out-of-fold one without a test set)."""
    from sklearn.metrics import roc_curve


    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    oof = oof or []  # an external evaluation has test items only
    y, p = _arrays(oof, "binary")
    folds = sorted({it["fold"] for it in oof})
    for k, f in enumerate(folds):
        sel = np.array([it["fold"] == f for it in oof])
        if len(set(y[sel].tolist())) == 2:
            fpr, tpr, _ = roc_curve(y[sel], p[sel])
            ax.plot(fpr, tpr, lw=0.7, alpha=0.5, color="tab:blue", label="folds (out-of-fold)" if k == 0 else None)
    curves = [("out-of-fold, pooled", y, p, "tab:blue")] if oof else []
    if test:
        curves.append((test_name, *_arrays(test, "binary"), "tab:red"))
    for name, yy, pp, colour in curves:
        auc = _auc(yy, pp)
        if auc is not None:
            fpr, tpr, _ = roc_curve(yy, pp)
            ax.plot(fpr, tpr, lw=2, color=colour, label=f"{name}, AUC {auc:.3f}")
    where = "test" if test else "oof"
    for k, op in enumerate(points):
        m = op.get(where) or {}
        if m.get("sensitivity") is not None and m.get("specificity") is not None:
            ax.plot(1 - m["specificity"], m["sensitivity"], MARKERS[k % len(MARKERS)], ms=8, mfc="none", mew=2,
                    color="k", label=f"{point_label(op)} (t={op['threshold']:.3f}, {where})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC ({positive} vs {negative})",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def roc_one_vs_rest(items, task_type, classes, title):
    """One ROC per class (multi-class, one-vs-rest) or per finding (multi-label, unknown labels left out)."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    y, p = _arrays(items, task_type)
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, c in enumerate(classes):
        yi = (y == i).astype(float) if task_type == "multiclass" else y[:, i]
        known = ~np.isnan(yi)
        yi, pi = yi[known].astype(int), p[known, i]
        auc = _auc(yi, pi)
        if auc is not None:
            fpr, tpr, _ = roc_curve(yi, pi)
            ax.plot(fpr, tpr, lw=1.5, label=f"{c}, AUC {auc:.3f} (n+ {int(yi.sum())})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def calibration(oof, test, bins: int):
    """Reliability diagram (observed vs predicted per equal-width bin) with the number of images per bin as a
    histogram below, so a point drawn from three images is seen as such."""
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0, 1, bins + 1)
    width = 1 / bins / 2.2
    for k, (name, items, colour) in enumerate((("out-of-fold", oof, "tab:blue"),
                                               ("test (fold ensemble)", test, "tab:red"))):
        if not items:
            continue
        y, p = _arrays(items, "binary")
        if len(set(y.tolist())) == 2:
            obs, pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
            ax.plot(pred, obs, "o-", color=colour, label=f"{name} (n={len(y)})")
        counts, _ = np.histogram(p, bins=edges)
        hx.bar(edges[:-1] + (k + 0.5) * width, counts, width=width, color=colour, align="edge", alpha=0.8)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(ylabel="observed frequency", title="Calibration", ylim=(-0.02, 1.02))
    ax.legend(loc="upper left", fontsize=8)
    hx.set(xlabel="predicted probability", ylabel="images per bin", xlim=(0, 1))
    fig.tight_layout()
    return fig


def confusion(matrix, labels, title):
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4 + 0.4 * len(labels), 3.6 + 0.4 * len(labels)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figures(summary: dict, oof, test, bins: int, test_name: str = "test (fold ensemble)") -> dict:
    """{file stem: Figure} for this task type."""
    kind, classes = summary["type"], summary["classes"]
    figs = {}
    if kind == "binary":
        pos = summary["positive_class"]
        neg = next(c for c in classes if c != pos)
        figs["roc"] = roc_binary(oof, test, summary.get("operating_points", []), pos, neg, test_name)
        figs["calibration"] = calibration(oof, test, bins)
        where, m = ("test", summary["test"]) if summary.get("test") else ("out-of-fold", summary["oof"])
        figs["confusion"] = confusion([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], [neg, pos],
                                      f"{where}, threshold {summary['threshold']:.3f}")
    else:
        where, items = ("test", test) if test else ("out-of-fold", oof)
        figs["roc_per_class"] = roc_one_vs_rest(
            items, kind, classes, f"{where}: one-vs-rest ROC per {'class' if kind == 'multiclass' else 'finding'}")
        m = summary["test"] if test else summary["oof"]
        if kind == "multiclass":
            figs["confusion"] = confusion(m["confusion_matrix"], classes, f"{where}, argmax")
    return figs
