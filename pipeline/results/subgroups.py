"""Metrics by subgroup (view, sex, age band, scanner, ...): does the model work equally for every group?

`report.subgroups` names attributes. Each comes from the manifest column of that name where the manifest has it
(a blank cell: 'unknown'), otherwise from the DICOM header read with the image (DICOM_KEYWORDS). `age_band` is
derived (<40, 40-60, >60 years) from a `patient_age` / `age` column or the PatientAge attribute ('045Y').

Per group, on the out-of-fold and the test predictions: images, patients, prevalence, AUROC, sensitivity and
specificity at the run's threshold with their 95% CIs (the rule of pipeline.results.metrics: patient bootstrap
for AUROC, design-effect Wilson for the proportions), and the difference to the rest of the set with a
patient-bootstrap CI. A group below the size floor (report.subgroup_min_n images, or fewer than 5 cases of either
class) is reported as too small, with no estimate.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
from scipy.stats import rankdata

from pipeline.results.metrics import compute_metrics, confidence_intervals, proportion_cis

DICOM_KEYWORDS = {
    "view_position": "ViewPosition", "patient_sex": "PatientSex", "patient_age": "PatientAge",
    "manufacturer": "Manufacturer", "manufacturer_model_name": "ManufacturerModelName",
    "body_part_examined": "BodyPartExamined", "modality": "Modality",
}
AGE_COLUMNS = ("patient_age", "age")
UNKNOWN = "unknown"
KEYS = ("auroc", "sensitivity", "specificity")
MIN_PER_CLASS = 5


def age_in_years(value) -> float | None:
    """A number of years, or a DICOM Age String ('045Y', '006M', '010W', '003D'); None when unreadable."""
    text = str(value or "").strip().upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)", text)
    if not m:
        return None
    return float(m.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.18, "D": 365.25}[m.group(2)]


def age_band(value) -> str:
    years = age_in_years(value)
    if years is None:
        return UNKNOWN
    return "<40" if years < 40 else ("40-60" if years <= 60 else ">60")


def _dicom_header(path: str) -> dict:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(DICOM_KEYWORDS.values()))
    except (InvalidDicomError, OSError, ValueError):
        return {}  # PNG, NIfTI, ...: no header to read
    return {k: str(ds.get(kw, "") or "").strip() for k, kw in DICOM_KEYWORDS.items()}


def attributes(names: list[str], samples, records_by_row: dict[int, dict]) -> dict[str, dict[str, str]]:
    """{image as written: {attribute: group}} for every sample, from the manifest record of its row
    (records_by_row: Sample.row -> the manifest's columns) or its DICOM header."""
    out: dict[str, dict[str, str]] = {}
    for s in samples:
        if s.image_text in out:
            continue  # frames of one file share its attributes
        rec = records_by_row.get(s.row, {})
        header: dict | None = None  # read once per file, and only when the manifest lacks a column
        values = {}
        for name in names:
            if name == "age_band":
                age = next((rec[c] for c in AGE_COLUMNS if c in rec), None)
                if age is None:
                    header = _dicom_header(s.image) if header is None else header
                    age = header.get("patient_age")
                values[name] = age_band(age)
                continue
            if name in rec:
                v = rec[name]
            else:
                header = _dicom_header(s.image) if header is None else header
                v = header.get(name, "")
            values[name] = (v or "").strip() or UNKNOWN
        out[s.image_text] = values
    return out


def auroc(y, p) -> float | None:
    """Binary AUROC as the Mann-Whitney statistic on mid-ranks: equal to sklearn's roc_auc_score (ties count
    one half) without its input validation, which dominates the thousands of calls of a bootstrap."""
    pos = np.asarray(y) == 1
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _key_metrics(task_type, y, p, classes, threshold) -> dict:
    if task_type != "binary":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = compute_metrics(task_type, y, p, classes, threshold)
        return {k: m.get(k) for k in KEYS}
    pred = p >= threshold
    pos = y == 1
    return {"auroc": auroc(y, p), "sensitivity": float(pred[pos].mean()) if pos.any() else None,
            "specificity": float((~pred[~pos]).mean()) if (~pos).any() else None}


def _patient_draws(patients, n: int, seed: int):
    """Index arrays of n patient-bootstrap resamples (every image of a drawn patient, as often as drawn)."""
    uniq, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))])


def _percentiles(draws: dict[str, list[float]], n: int) -> dict:
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()
            if len(v) >= n // 2}


def group_cis(task_type, y, p, classes, patients, threshold, n: int, seed: int) -> dict:
    """95% CIs of KEYS in one group by the project's rule (metrics.confidence_intervals): design-effect
    adjusted Wilson intervals for sensitivity and specificity, a patient-bootstrap percentile interval for AUROC.
    The bootstrap here scores only AUROC (metrics.bootstrap_ci would score every metric in every draw)."""
    if task_type != "binary":
        ci, _, _ = confidence_intervals(task_type, y, p, classes, patients, threshold, n=n, seed=seed)
        return {k: ci[k] for k in KEYS if ci.get(k)}
    ci = proportion_cis(task_type, y, p, patients, threshold)
    draws = {"auroc": [v for idx in _patient_draws(patients, n, seed) if (v := auroc(y[idx], p[idx])) is not None]}
    return {**{k: ci[k] for k in ("sensitivity", "specificity") if ci.get(k)}, **_percentiles(draws, n)}


def difference_cis(task_type, y, p, classes, patients, in_group, threshold, n: int, seed: int) -> dict:
    """Percentile CI of (group - rest) for KEYS. metrics.bootstrap_ci resamples one set; a difference needs both
    subsets from the same draw of patients (a patient may have images in both groups, e.g. an AP and a PA film)."""
    if n <= 0:
        return {}
    draws: dict[str, list[float]] = {k: [] for k in KEYS}
    for idx in _patient_draws(patients, n, seed):
        g, r = idx[in_group[idx]], idx[~in_group[idx]]
        if len(g) == 0 or len(r) == 0:
            continue
        mg, mr = _key_metrics(task_type, y[g], p[g], classes, threshold), _key_metrics(task_type, y[r], p[r], classes, threshold)
        for k in KEYS:
            if mg[k] is not None and mr[k] is not None:
                draws[k].append(mg[k] - mr[k])
    return _percentiles(draws, n)


def _too_small(task_type, y, min_n: int) -> str | None:
    if len(y) < min_n:
        return f"{len(y)} images (< {min_n})"
    if task_type == "binary" and min(int(y.sum()), int(len(y) - y.sum())) < MIN_PER_CLASS:
        return f"{int(y.sum())} positive / {int(len(y) - y.sum())} negative (< {MIN_PER_CLASS} of a class)"
    return None


def subgroup_table(task_type: str, classes, items, attrs: dict, names: list[str], threshold: float,
                   min_n: int = 20, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (attribute, group) of the scored items (report._aggregate items)."""
    if not items:
        return []
    y = np.array([it["target"] for it in items], dtype=float)
    y = y if task_type == "multilabel" else y.astype(int)
    p = np.array([it["prob"] for it in items], dtype=float)
    patients = np.array([it["patient_id"] for it in items])
    rows = []
    for name in names:
        values = np.array([attrs.get(it["image"], {}).get(name, UNKNOWN) for it in items])
        for group in sorted(set(values.tolist())):
            sel = values == group
            row = {"attribute": name, "group": group, "n_images": int(sel.sum()),
                   "n_patients": len(set(patients[sel].tolist())),
                   "prevalence": float(y[sel].mean()) if task_type == "binary" else None}
            small = _too_small(task_type, y[sel], min_n)
            if small:
                rows.append({**row, "too_small": small, **{k: None for k in KEYS}, "ci95": {}, "difference": {}})
                continue
            m = _key_metrics(task_type, y[sel], p[sel], classes, threshold)
            ci = group_cis(task_type, y[sel], p[sel], classes, patients[sel], threshold, n_boot, seed)
            rest = _key_metrics(task_type, y[~sel], p[~sel], classes, threshold) if (~sel).any() else {}
            diff_ci = difference_cis(task_type, y, p, classes, patients, sel, threshold, n_boot, seed) if rest else {}
            diff = {k: {"value": m[k] - rest[k], "ci95": diff_ci.get(k)} for k in KEYS
                    if m[k] is not None and rest.get(k) is not None}
            rows.append({**row, "too_small": None, **m, "ci95": ci,
                         "difference": diff})
    return rows


def _fmt(v, ci=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" + (f" ({ci[0]:.3f} – {ci[1]:.3f})" if ci else "")


def markdown(rows: list[dict], where: str) -> list[str]:
    if not rows:
        return []
    lines = [f"{where}:", "", "| attribute | group | images | patients | prevalence | AUROC | sensitivity | "
             "specificity | AUROC − rest | sensitivity − rest | specificity − rest |", "|---" * 11 + "|"]
    for r in rows:
        prev = "" if r["prevalence"] is None else f"{r['prevalence']:.1%}"
        head = f"| {r['attribute']} | {r['group']} | {r['n_images']} | {r['n_patients']} | {prev} | "
        if r["too_small"]:
            lines.append(head + f"too small ({r['too_small']}) | | | | | |")
            continue
        diffs = [r["difference"].get(k) for k in KEYS]
        lines.append(head + " | ".join(_fmt(r[k], r["ci95"].get(k)) for k in KEYS) + " | "
                     + " | ".join(_fmt(d["value"], d["ci95"]) if d else "" for d in diffs) + " |")
    return lines


def forest_plot(tables: dict[str, list[dict]], metric: str = "auroc"):
    """AUROC (95% CI) per group, one panel per set; too-small groups are named without a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {k: v for k, v in tables.items() if v}
    n = max(len(v) for v in tables.values())
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 0.45 * n + 1.5), squeeze=False)
    for ax, (where, rows) in zip(axes[0], tables.items(), strict=True):
        for i, r in enumerate(rows):
            yk = len(rows) - 1 - i
            if r["too_small"] or r.get(metric) is None:
                ax.text(0.5, yk, "too small", va="center", ha="center", fontsize=8, color="grey")
                continue
            lo, hi = r["ci95"].get(metric) or (r[metric], r[metric])
            # a percentile interval need not contain the point estimate: draw the interval as it is
            ax.errorbar(r[metric], yk, xerr=[[max(0.0, r[metric] - lo)], [max(0.0, hi - r[metric])]], fmt="s",
                        color="C0", capsize=3)
            if not lo <= r[metric] <= hi:
                ax.plot([lo, hi], [yk, yk], color="C0")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r['attribute']}={r['group']} (n={r['n_images']})" for r in reversed(rows)], fontsize=8)
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1.02)
        ax.set_xlabel(f"{metric.upper()} (95% CI)")
        ax.set_title(where)
    fig.tight_layout()
    return fig


def manifest_records(cfg, names: list[str]) -> dict[int, dict]:
    """Sample.row -> the manifest record, rows numbered as load_manifest numbers them (after data.exclude).
    A name that is neither a manifest column nor a DICOM attribute nor age_band stops with one line."""
    from pipeline.data.manifest import _read_records  # the manifest's own reader: its root and exclusions
    from pipeline.errors import ConfigError
    from pipeline.schema import resolve_data_path

    path = resolve_data_path(cfg.data.manifest)
    _, columns, records = _read_records(path, cfg)
    for name in names:
        if name not in columns and name not in DICOM_KEYWORDS and name != "age_band":
            raise ConfigError(f"report.subgroups: '{name}' is neither a column of {path.name} "
                              f"({', '.join(columns)}) nor one of age_band, {', '.join(DICOM_KEYWORDS)}")
    return {line: rec for line, rec in enumerate(records, start=2)}
