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

from dataclasses import dataclass, replace

from pipeline.results.records import FoldResult, Scores
from pipeline.results.report import Outcome, mean_sd, summarize
from pipeline.schema import Config


def training_seeds(cfg: Config) -> list[int]:
    return [cfg.train.seed + r for r in range(cfg.train.repeats)]


def seed_config(cfg: Config, seed: int) -> Config:
    """The run's config with another training seed (cv.seed, hence the folds, unchanged)."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})


def combine(per_seed: dict[int, list[FoldResult]]) -> list[FoldResult]:
    """Fold results of the seed ensemble: per fold, validation and test probabilities averaged over seeds."""
    seeds = list(per_seed)
    out = []
    for k, first in enumerate(per_seed[seeds[0]]):
        same = [per_seed[s][k] for s in seeds]
        tests = [r.test for r in same if r.test is not None]
        out.append(replace(first, best_epoch=[r.best_epoch for r in same], stage=[r.stage for r in same],
                           val=Scores.mean_by_index([r.val for r in same]),
                           test=Scores.mean_by_index(tests) if tests else None))
    return out


@dataclass(frozen=True)
class SeedOutcomes:
    """The run's outcome (the seed ensemble's, or the one seed's) and each seed's own, keyed by seed."""

    run: Outcome
    per_seed: dict[int, Outcome]


def summarize_seeds(cfg: Config, prep, per_seed: dict[int, list[FoldResult]],
                    started: float | None = None) -> SeedOutcomes:
    from pipeline.results import clinical

    seeds, samples = list(per_seed), prep.decoded.samples
    # one temperature (report.calibrate) for every fold model of every seed, applied to each model's
    # probabilities before any averaging, as the deployed ensemble does; every number below is calibrated
    raw = per_seed
    temperature, per_seed = clinical.calibrate(cfg, samples, raw)
    if len(seeds) == 1:
        top_results, top_raw = per_seed[seeds[0]], raw[seeds[0]]
        top = summarize(cfg, prep, top_results, started=started)
        outcomes = {seeds[0]: top}
    else:
        top_results, top_raw = combine(per_seed), combine(raw)
        top = summarize(cfg, prep, top_results, started=started)
        # every seed scored at the run's one operating point, so per-seed numbers compare with the top level
        outcomes = {s: summarize(seed_config(cfg, s), prep, per_seed[s], threshold=top.summary.threshold)
                    for s in seeds}
    blocks = clinical.run_blocks(cfg, samples, top.summary.threshold, temperature, clinical.raw_items(samples, top_raw),
                                 {"oof": top.oof, "test": top.test})
    top = clinical.with_spread(replace(top, summary=top.summary.with_(**blocks)), samples, top_results, cfg.task)
    cv_mean, cv_sd = mean_sd([o.summary.mean for o in outcomes.values()])
    test_mean, test_sd = mean_sd([o.summary.test or {} for o in outcomes.values()])
    summary = top.summary.with_(
        seeds=[{"seed": s, "folds": o.summary.folds, "mean": o.summary.mean, "test": o.summary.test}
               for s, o in outcomes.items()],
        seeds_mean={"cv": cv_mean, "test": test_mean}, seeds_sd={"cv": cv_sd, "test": test_sd})
    return SeedOutcomes(replace(top, summary=summary), outcomes)
