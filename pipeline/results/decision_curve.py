"""Decision curve analysis (Vickers & Elkin, Med Decis Making 2006): would acting on the model do more good than
harm, at the threshold probability a clinician would act on?

Net benefit at threshold probability t = TP/n - FP/n * t / (1 - t): true positives found, minus false positives
weighted by the odds at which the clinician is indifferent between treating and not. "Treat all" calls every case
positive; "treat none" has net benefit 0. The model is useful at t where its curve is above both. Probabilities
must be calibrated for t to mean a probability (report.calibrate). Binary tasks.

Written here because scikit-learn has no net benefit and the maintained Python DCA packages (dcurves) bring
pandas/statsmodels plotting stacks for a formula of one line.
"""

from __future__ import annotations

import numpy as np

# thresholds a reader can relate to a clinical decision (the table); the curve uses a fine grid
READABLE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
GRID = tuple(round(float(t), 2) for t in np.arange(0.01, 1.0, 0.01))


def net_benefit(y, p, t: float) -> float:
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    called = p >= t
    n = len(y)
    tp, fp = int((called & (y == 1)).sum()), int((called & (y == 0)).sum())
    return tp / n - fp / n * t / (1 - t)


def treat_all(y, t: float) -> float:
    prevalence = float(np.mean(np.asarray(y, dtype=int)))
    return prevalence - (1 - prevalence) * t / (1 - t)


def decision_curve(y, p, thresholds=GRID) -> dict:
    """{'thresholds', 'model', 'treat_all', 'treat_none'} on the grid, and 'table' at READABLE_THRESHOLDS."""
    if len(y) == 0:
        return {}
    ts = [float(t) for t in thresholds]
    table = [{"threshold": t, "model": net_benefit(y, p, t), "treat_all": treat_all(y, t), "treat_none": 0.0}
             for t in READABLE_THRESHOLDS]
    return {"thresholds": ts, "model": [net_benefit(y, p, t) for t in ts], "treat_all": [treat_all(y, t) for t in ts],
            "treat_none": [0.0] * len(ts), "n": int(len(y)), "prevalence": float(np.mean(y)), "table": table}


def useful_ranges(curve: dict) -> list[list[float]]:
    """[[from, to], ...]: the runs of consecutive grid thresholds where the model's net benefit is above both
    treat-all and treat-none (where it only equals treat-all, it calls every case positive there)."""
    out: list[list[float]] = []
    previous = None
    for k, (t, m, a) in enumerate(zip(curve.get("thresholds", []), curve.get("model", []), curve.get("treat_all", []),
                                      strict=True)):
        if m > max(a, 0.0) + 1e-12:
            if previous == k - 1:
                out[-1][1] = t
            else:
                out.append([t, t])
            previous = k
    return out


def plot(curves: dict[str, dict], title: str = "Decision curve"):
    """One panel per set ('out-of-fold', 'test'): net benefit of the model, treat-all and treat-none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {k: v for k, v in curves.items() if v}
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items(), strict=True):
        ts = np.array(c["thresholds"])
        ax.plot(ts, c["model"], label="model", lw=2)
        ax.plot(ts, c["treat_all"], label="treat all", ls="--", color="grey")
        ax.axhline(0, label="treat none", color="black", lw=1)
        ax.set_ylim(min(-0.05, min(c["model"]) - 0.02), max(c["prevalence"], max(c["model"])) + 0.05)
        ax.set_xlabel("threshold probability")
        ax.set_ylabel("net benefit")
        ax.set_title(f"{name} (n={c['n']}, prevalence {c['prevalence']:.0%})")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
