"""Repeated seeds: the whole cross-validation trained again with seeds seed, seed+1, ... on the same folds.

What summary.json's top level describes with several seeds: the SEED ENSEMBLE. Each image's out-of-fold
probability is the mean over seeds of its fold's models, so `folds`, `mean`, `std`, `oof` and the threshold
(Youden on those out-of-fold predictions) are those of the seed-averaged models, and `test` is the ensemble of
every seed's fold models (what predict / evaluate / export load). `seeds` lists each seed's own `folds`, `mean`
and `test` (scored at the run's one threshold), and `seeds_mean` / `seeds_sd` give mean ± sd over seeds of the
per-seed CV means and test metrics: the seed-to-seed noise a comparison between settings has to beat.
Each seed's complete outputs (summary.json, predictions, report.md) are in seed_S/. With one seed nothing
moves (fold_K/ in the run folder) and `seeds` has one entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.model.checkpoint import seed_dir
from pipeline.results.tracking import Tracker
from pipeline.schema import Config
from pipeline.vocab import METRICS, TABLE_METRICS


def training_seeds(cfg: Config) -> list[int]:
    return [cfg.train.seed + r for r in range(cfg.train.repeats)]


def seed_config(cfg: Config, seed: int) -> Config:
    """The run's config with another training seed (cv.seed, hence the folds, unchanged)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})


def _mean_by_index(parts: list[dict]) -> dict:
    by_index: dict[int, list] = {}
    for part in parts:
        for i, p in zip(part["indices"], part["probs"], strict=True):
            by_index.setdefault(i, []).append(p)
    idx = sorted(by_index)
    return {"indices": idx, "probs": [np.mean(by_index[i], axis=0).tolist() for i in idx]}


def combine(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Fold results of the seed ensemble: per fold, validation and test probabilities averaged over seeds."""
    seeds = list(per_seed)
    out = []
    for k, first in enumerate(per_seed[seeds[0]]):
        same = [per_seed[s][k] for s in seeds]
        tests = [r["test"] for r in same if r.get("test")]
        test = _mean_by_index(tests) if tests else None
        if test is not None:
            test["n_models"] = len(tests)
        out.append({**first, "best_epoch": [r["best_epoch"] for r in same], "stage": [r["stage"] for r in same],
                    "val": _mean_by_index([r["val"] for r in same]), "test": test})
    return out


def _spread(values: list[dict]) -> tuple[dict, dict]:
    mean, sd = {}, {}
    for k in METRICS:
        vals = [v[k] for v in values if v and v.get(k) is not None]
        if vals:
            mean[k] = float(np.mean(vals))
            sd[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return mean, sd


def write_seed_outputs(cfg: Config, run_dir: Path, prep, per_seed: dict[int, list[dict]], tracker,
                       started: float | None = None) -> dict:
    from pipeline.results.report import write_outputs

    seeds = list(per_seed)
    if len(seeds) == 1:
        summary = write_outputs(cfg, run_dir, prep, per_seed[seeds[0]], tracker, started=started)
        summaries = {seeds[0]: summary}
    else:
        summary = write_outputs(cfg, run_dir, prep, combine(per_seed), tracker, started=started)
        # every seed scored at the run's one operating point, so per-seed numbers compare with the top level
        # the Grad-CAM panel once, of the seed ensemble at the top level (a seed folder is not a loadable run)
        fixed = cfg.model_copy(update={"report": cfg.report.model_copy(
            update={"threshold": summary["threshold"], "cam_panel": False})})
        summaries = {}
        for s in seeds:
            summaries[s] = write_outputs(seed_config(fixed, s), seed_dir(run_dir, s, len(seeds)), prep, per_seed[s],
                                         Tracker(run_dir, enabled=False))
    summary["seeds"] = [{"seed": s, "folds": v["folds"], "mean": v["mean"], "test": v["test"]}
                        for s, v in summaries.items()]
    cv_mean, cv_sd = _spread([v["mean"] for v in summaries.values()])
    test_mean, test_sd = _spread([v["test"] for v in summaries.values()])
    summary["seeds_mean"] = {"cv": cv_mean, "test": test_mean}
    summary["seeds_sd"] = {"cv": cv_sd, "test": test_sd}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if len(seeds) > 1:
        with (run_dir / "report.md").open("a") as fh:
            fh.write(seeds_markdown(summary))
    return summary


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def seeds_markdown(summary: dict) -> str:
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
