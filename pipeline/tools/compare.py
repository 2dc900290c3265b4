"""Compare finished runs on the same data: metrics side by side and paired tests of every pair.

    graystem compare RUN_A RUN_B [RUN_C ...] [--on test|oof] [--metric auroc] [--bootstrap 2000] [--json]

For each pair (a, b): diff = metric(b) - metric(a) on the same cases, with a 95% CI from a paired patient
bootstrap (patients resampled with replacement, the same draw for both runs) and a two-sided p-value from that
bootstrap distribution, 2 * min(P(d <= 0), P(d >= 0)); for binary AUROC also DeLong's test (pipeline.results.stats).
Predictions are the runs' own files (test_predictions.csv, or oof_predictions.csv with --on oof), matched by
image and patient; an evaluation folder (`graystem evaluate --out DIR`) counts as a run scored on its manifest; runs scored on different test patients (or, with --on oof, different images) are refused.
A run trained over several seeds (--seeds N) is compared through its seed ensemble: the top-level prediction
files hold, per image, the mean probability over every seed's fold models (each seed's own files are in
seed_S/, and the run table shows the mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, DataError, exits_on_error
from pipeline.results.metrics import compute_metrics
from pipeline.results.stats import auroc, delong_test, paired_bootstrap
from pipeline.runfolder import RunFolder
from pipeline.vocab import METRICS


@dataclass
class RunPredictions:
    path: Path
    summary: dict
    keys: list[tuple[str, str]]  # (image, patient_id) per row
    y: np.ndarray
    p: np.ndarray  # binary: p(positive); otherwise (n, C) in class order
    name: str = ""  # as shown: the folder name, or more of the path where two runs share one (seed_42)


def _distinct_names(paths: list[Path]) -> list[str]:
    """The last path component of each run, with parent folders added until no two runs share a name."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same folder given twice


def _read(run_dir: Path, on: str) -> RunPredictions:
    folder = RunFolder(run_dir)
    summary = RunFolder.read_json(folder.summary)
    if summary is None:
        raise ConfigError(f"{run_dir}: no {RunFolder.SUMMARY} (not a finished run folder)")
    evaluation = "manifest" in summary and folder.evaluated.is_file()  # a `graystem evaluate` output folder
    if evaluation and on == "oof":
        raise DataError(f"{run_dir}: an evaluation folder has no out-of-fold predictions; compare it --on test")
    csv_path = folder.evaluated if evaluation else folder.oof_predictions if on == "oof" else folder.test_predictions
    if not csv_path.is_file():
        raise DataError(f"{run_dir}: no {csv_path.name} (a run without a test split has no test predictions; "
                        "use --on oof)")
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes, kind = summary["classes"], summary["type"]
    keys = [(r["image"], r["patient_id"]) for r in rows]
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=float)
    if kind == "binary":
        pos = summary.get("positive_class") or classes[-1]
        y = np.array([int(r["label"] == pos) for r in rows])
        p = probs[:, classes.index(pos)]
    elif kind == "multiclass":
        y, p = np.array([classes.index(r["label"]) for r in rows]), probs
    else:
        y = np.array([[float(r[f"label_{c}"]) if r[f"label_{c}"] != "" else math.nan for c in classes]
                      for r in rows])
        p = probs
    order = np.argsort([f"{i}\0{pid}" for i, pid in keys], kind="stable")  # rows matched by image + patient
    return RunPredictions(run_dir, summary, [keys[i] for i in order], y[order], p[order])


def _check_same_cases(a: RunPredictions, b: RunPredictions, on: str) -> None:
    if (a.summary["type"], a.summary["classes"]) != (b.summary["type"], b.summary["classes"]):
        raise DataError(f"{b.path}: task {b.summary['type']} {b.summary['classes']} differs from {a.path}'s "
                        f"{a.summary['type']} {a.summary['classes']}; compare runs of the same task")
    if on == "test":
        pa, pb = {k[1] for k in a.keys}, {k[1] for k in b.keys}
        what = "test patients"
    else:
        pa, pb = set(a.keys), set(b.keys)
        what = "out-of-fold images"
    if pa != pb or len(a.keys) != len(b.keys):
        raise DataError(f"{b.path}: its {what} differ from {a.path}'s ({len(pa - pb)} only in {a.name}, "
                        f"{len(pb - pa)} only in {b.name}); paired comparison needs runs on the same data")
    if a.keys != b.keys:
        raise DataError(f"{b.path}: its {on} images differ from {a.path}'s; paired comparison needs the same images")


def _metric_fn(summary: dict, metric: str):
    kind, classes, threshold = summary["type"], summary["classes"], summary.get("threshold", 0.5)
    if kind == "binary" and metric == "auroc":
        return auroc  # the bootstrap's hot path: rank AUROC, no per-call input checks
    return lambda y, p: compute_metrics(kind, y, p, classes, threshold).get(metric)


def _run_row(r: RunPredictions, metric: str, on: str) -> dict:
    s = r.summary
    block = s.get("test") if on == "test" else s.get("oof")
    seeds = s.get("seeds") or []
    row = {"run": str(r.path), "name": r.name, "n": len(r.keys), "n_seeds": max(1, len(seeds)),
           "cv_mean": s.get("mean", {}).get(metric), "cv_sd": s.get("std", {}).get(metric),
           on: (block or {}).get(metric), "ci95": ((block or {}).get("ci95") or {}).get(metric)}
    if len(seeds) > 1 and "seeds_mean" in s:  # an evaluation folder lists its seeds only
        part = "test" if on == "test" else "cv"
        row["seeds_mean"] = s["seeds_mean"][part].get(metric)
        row["seeds_sd"] = s["seeds_sd"][part].get(metric)
    return row


def compare(run_dirs: list[Path], on: str = "test", metric: str = "auroc", n_boot: int = 2000,
            seed: int = 0) -> dict:
    runs = [_read(Path(d), on) for d in run_dirs]
    runs = [replace(r, name=n) for r, n in zip(runs, _distinct_names([r.path for r in runs]), strict=True)]
    for other in runs[1:]:
        _check_same_cases(runs[0], other, on)
    patients = [k[1] for k in runs[0].keys]
    pairs = []
    for a, b in combinations(runs, 2):
        boot = paired_bootstrap(_metric_fn(a.summary, metric), a.y, a.p, b.p, patients, n=n_boot, seed=seed,
                                metric_b=_metric_fn(b.summary, metric))
        delong = None
        if a.summary["type"] == "binary" and metric == "auroc":
            try:
                delong = delong_test(a.y, a.p, b.p)[1]
            except ValueError:  # fewer than two cases of a class
                delong = None
        pairs.append({"a": a.name, "b": b.name, "metric": metric, "diff": boot["diff"], "ci95": boot["ci95"],
                      "p_value": boot["p_value"], "delong_p": delong, "n_boot": boot["n_boot"]})
    return {"on": on, "metric": metric, "runs": [_run_row(r, metric, on) for r in runs], "pairs": pairs}


def _f(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _p(v) -> str:
    """p-values: 3 decimals, small ones in scientific notation (never a bare 0.000)."""
    return "n/a" if v is None else format(v, ".3f") if v >= 0.001 else format(v, ".1e")


def format_comparison(result: dict) -> str:
    on, metric = result["on"], result["metric"]
    width = max(len(r["name"]) for r in result["runs"])
    lines = [f"{'run':<{width}}  seeds  {'CV ' + metric + ' mean ± sd':>20}  {on + ' ' + metric:>10}  95% CI"]
    for r in result["runs"]:
        ci = r["ci95"]
        extra = (f"   (over seeds: {_f(r['seeds_mean'])} ± {_f(r['seeds_sd'])})" if "seeds_mean" in r else "")
        lines.append(f"{r['name']:<{width}}  {r['n_seeds']:>5}  {_f(r['cv_mean']) + ' ± ' + _f(r['cv_sd']):>20}  "
                     f"{_f(r[on]):>10}  {(_f(ci[0]) + ' - ' + _f(ci[1])) if ci else ''}{extra}")
    lines += ["", f"paired differences on the {on} set ({result['runs'][0]['n']} images; diff = b - a; CI and p from "
              "a paired patient bootstrap, p = 2·min(1 + #(d≤0), 1 + #(d≥0)) / (1 + draws); DeLong for binary AUROC):"]
    for p in result["pairs"]:
        ci = p["ci95"]
        lines.append(f"  {p['b']} - {p['a']}: {metric} diff {_f(p['diff'], '+.3f')}  95% CI "
                     f"{(_f(ci[0], '+.3f') + ' to ' + _f(ci[1], '+.3f')) if ci else 'n/a'}  p = {_p(p['p_value'])}"
                     + (f"  DeLong p = {_p(p['delong_p'])}" if p["delong_p"] is not None else ""))
    return "\n".join(lines)


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="two or more finished run folders")
    ap.add_argument("--on", choices=["test", "oof"], default="test",
                    help="held-out test predictions (default) or out-of-fold predictions")
    ap.add_argument("--metric", default="auroc", choices=[m for m in METRICS if m not in ("threshold",)])
    ap.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="paired bootstrap draws (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        raise ConfigError("compare needs at least two run folders")
    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be at least 1")
    result = compare(args.runs, args.on, args.metric, args.bootstrap, args.seed)
    print(json.dumps(result) if args.json else format_comparison(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
