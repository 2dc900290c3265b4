"""report.md sections, figures and TensorBoard entries of the clinical blocks (pipeline.results.clinical)."""

from __future__ import annotations

from pipeline.results import decision_curve, subgroups
from pipeline.results.tracking import Tags

NAMES = {"oof": "out-of-fold", "test": "test (fold ensemble)", "external": "external set"}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _calibration(c: dict) -> list[str]:
    t = c.get("temperature")
    how = ("one logit temperature fitted on the pooled out-of-fold predictions: T = "
           + ", ".join(f"{v:.3f}" for v in t) + " (T > 1: the raw model was overconfident). Every probability "
           "below, in the prediction files, `predict`, `evaluate` and the exported models is divided through it."
           if t else "none (report.calibrate: none): the raw model probabilities.")
    lines = ["", "## Calibration", "", f"Calibration: {how} Thresholds are chosen on the calibrated out-of-fold "
             "probabilities. ECE: expected calibration error (equal-width bins); Brier: mean squared error of the "
             "probability (binary: of p(positive); multi-class: of the top-label confidence).", "",
             "| set | ECE before | ECE after | Brier before | Brier after |", "|---|---|---|---|---|"]
    for where in ("oof", "test", "external"):
        if where in c:
            b, a = c[where].get("before") or {}, c[where]["after"]
            lines.append(f"| {NAMES[where]} | {_f(b.get('ece'))} | {_f(a['ece'])} | {_f(b.get('brier'))} | "
                         f"{_f(a['brier'])} |")
    return lines


def _subgroups(s: dict) -> list[str]:
    lines = ["", "## Subgroups", "",
             f"By {', '.join(s['attributes'])} (manifest columns or DICOM attributes). AUROC, sensitivity and "
             "specificity at the run's threshold with 95% CIs; the last three columns are the differences to the rest of the "
             f"set (patient bootstrap). Groups under {s['min_n']} images or with fewer than {subgroups.MIN_PER_CLASS} "
             "cases of a class are too small for an estimate. A group whose difference CI excludes 0 works "
             "differently; a large gap between views of one finding is a sign of a shortcut.", ""]
    for where in ("oof", "test", "external"):
        if s.get(where):
            lines += subgroups.markdown(s[where], NAMES[where]) + [""]
    return lines


def _decision(d: dict) -> list[str]:
    lines = ["", "## Decision curve", "",
             "Net benefit (Vickers & Elkin 2006) = TP/n − FP/n · t/(1 − t) at threshold probability t: the share of "
             "patients correctly treated, less the wrongly treated weighted by how much worse a missed case is "
             "judged than an unnecessary treatment. The model helps where it beats both treat-all and treat-none.", "",
             "| set | t | model | treat all | treat none |", "|---|---|---|---|---|"]
    for where, c in d.items():
        for row in c.get("table", []):
            lines.append(f"| {NAMES[where]} | {row['threshold']:.2f} | {row['model']:.3f} | {row['treat_all']:.3f} | 0 |")
    lines.append("")
    for where, c in d.items():
        lines.append(f"{NAMES[where]}: the model beats both at t = {ranges(c.get('useful_ranges'))}.  ")
    return lines


def ranges(rs) -> str:
    """'0.11–0.35, 0.40–0.97' or 'no threshold'."""
    return ", ".join(f"{a:.2f}" if a == b else f"{a:.2f}–{b:.2f}" for a, b in rs) if rs else "no threshold"


def _conformal(c: dict) -> list[str]:
    lines = ["", "## Uncertainty per case", "",
             f"Split conformal prediction sets at α = {c['alpha']} (calibration set: {c['calibration_set']}): each case "
             f"gets the set of classes that cannot be ruled out; it should contain the true class in at least "
             f"{1 - c['alpha']:.0%} of cases. A single-label set is a confident call, a two-label set an "
             "'unsure'. `test_predictions.csv` also gives the spread (sd) of the fold models per case.", "",
             "| set | coverage | single-label | unsure | empty |", "|---|---|---|---|---|"]
    for where in ("oof", "test", "external"):
        if where in c:
            m = c[where]
            lines.append(f"| {NAMES[where]} | {m['coverage']:.3f} | {m['single']:.1%} | {m['unsure']:.1%} | "
                         f"{m['empty']:.1%} |")
    lines += ["", "Abstaining on the least certain cases (probability closest to the threshold, or lowest top "
              "probability) and scoring the rest:", "", "| set | kept | n | accuracy |", "|---|---|---|---|"]
    for where in ("oof", "test", "external"):
        for r in c.get(where, {}).get("abstention", []):
            lines.append(f"| {NAMES[where]} | {r['kept']:.0%} | {r['n']} | {r['accuracy']:.3f} |")
    return lines


def markdown(summary: dict) -> list[str]:
    lines = []
    if summary.get("calibration"):
        lines += _calibration(summary["calibration"])
    if summary.get("subgroups"):
        lines += _subgroups(summary["subgroups"])
    if summary.get("decision_curve"):
        lines += _decision(summary["decision_curve"])
    if summary.get("conformal"):
        lines += _conformal(summary["conformal"])
    return lines


def _reliability_plot(c: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [w for w in ("oof", "test", "external") if w in c]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 4.2), squeeze=False)
    for ax, where in zip(axes[0], sets, strict=True):
        for key, colour in (("before", "C1"), ("after", "C0")):
            st = c[where].get(key)
            if not st or not st["reliability"]:
                continue
            bins = st["reliability"]
            x, obs = [b["mean_predicted"] for b in bins], [b["observed"] for b in bins]
            # max(0, .): rounding can put a Wilson bound a hair inside the observed value
            err = [[max(0.0, o - b["ci95"][0]) for o, b in zip(obs, bins, strict=True)],
                   [max(0.0, b["ci95"][1] - o) for o, b in zip(obs, bins, strict=True)]]
            ax.errorbar(x, obs, yerr=err, fmt="o-", color=colour, capsize=2, ms=4,
                        label=f"{key} (ECE {st['ece']:.3f})")
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set_xlabel("mean predicted probability (quantile bins)")
        ax.set_ylabel("observed frequency (Wilson 95% CI)")
        ax.set_title(NAMES[where])
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(summary: dict) -> dict:
    figs = {}
    c = summary.get("calibration") or {}
    if any(w in c for w in ("oof", "test", "external")):
        figs["reliability"] = _reliability_plot(c)
    s = summary.get("subgroups")
    if s and any(s.get(w) for w in ("oof", "test", "external")):
        figs["subgroups_forest"] = subgroups.forest_plot({NAMES[w]: s[w] for w in ("oof", "test", "external")
                                                          if s.get(w)})
    d = summary.get("decision_curve")
    if d:
        figs["decision_curve"] = decision_curve.plot({NAMES[w]: v for w, v in d.items()})
    return figs


def log_scalars(tracker, summary: dict) -> None:
    """Calibration, conformal coverage and subgroup AUROCs as TensorBoard scalars (the figures go with the
    report's, through report_md)."""
    c = summary.get("calibration") or {}
    for i, t in enumerate(c.get("temperature") or []):
        tracker.scalar(f"calibration/temperature_{i}", t, 0)
    for where in ("oof", "test"):
        for key in ("before", "after"):
            tracker.scalar(f"calibration/{where}_ece_{key}", ((c.get(where) or {}).get(key) or {}).get("ece"), 0)
        conf = (summary.get("conformal") or {}).get(where)
        if conf:
            tracker.scalar(f"conformal/{where}_coverage", conf["coverage"], 0)
            tracker.scalar(f"conformal/{where}_single_label", conf["single"], 0)
        for r in (summary.get("subgroups") or {}).get(where) or []:
            tracker.scalar(f"subgroups/{where}_auroc/{r['attribute']}={r['group']}", r.get("auroc"), 0)
        for row in ((summary.get("decision_curve") or {}).get(where) or {}).get("table", []):
            tracker.scalar(f"decision_curve/{where}_net_benefit_t{row['threshold']:.2f}", row["model"], 0)
    lines = markdown(summary)
    if lines:
        tracker.text(Tags.figure("clinical_tables"), "\n".join(lines))
