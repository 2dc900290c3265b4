"""The end of a run: every output written once from the fold results (`finish`), by the run itself or by
`--aggregate RUN` once separate `--fold` processes have all finished (`aggregate`)."""

from __future__ import annotations

from dataclasses import replace

from monai.data.meta_obj import set_track_meta

from pipeline.data.datasets import decoded_pixels
from pipeline.data.prepare import Prepared, prepare_from_run
from pipeline.deploy.finished import write_deployment
from pipeline.errors import ConfigError
from pipeline.logs import log
from pipeline.model.deployment import Deployment
from pipeline.model.outputs import class_matrix, probability_fields
from pipeline.model.stems import Normalization
from pipeline.results.checklist import write_checklist
from pipeline.results.data_checks import data_checks_block
from pipeline.results.records import FoldResult, Summary
from pipeline.results.report import track_summary, write_predictions, write_summary
from pipeline.results.report_md import write_report
from pipeline.results.tracking import Tags, Tracker
from pipeline.runfolder import RunFolder
from pipeline.schema import Config
from pipeline.train.seeds import seed_config, summarize_seeds


def _panel(cfg: Config, folder: RunFolder, prep: Prepared, outcome, deployment: Deployment) -> None:
    """The Grad-CAM panel of the finished run, drawn from the pixels already decoded; a failure here costs the
    picture, never the finished run."""
    if not (cfg.report.cam_panel and cfg.tracking.log_images and outcome.test):  # no patient pixels when off
        return
    from pipeline.deploy.cam import report_cam_panel
    from pipeline.deploy.finished import FinishedRun
    from pipeline.model.checkpoint import load_checkpoint

    try:
        first = {}
        for i, s in enumerate(prep.decoded.samples):
            first.setdefault(s.image_text, i)
        fields = probability_fields(cfg.task)
        rows = [{"image": it["image"], "label": it["label"],
                 **dict(zip(fields, class_matrix(cfg.task, [it["prob"]])[0], strict=True))} for it in outcome.test]
        run = FinishedRun(folder, cfg, deployment, tuple(load_checkpoint(p) for _, p in folder.checkpoint_paths()))
        report_cam_panel(run, rows, lambda image: decoded_pixels(cfg, prep.decoded, first[image]))
    except Exception as exc:  # the run's results are already written
        log.warning(f"grad-cam panel not drawn: {type(exc).__name__}: {exc}")


def _label_issues(cfg: Config, folder: RunFolder, prep: Prepared, outcome) -> dict | None:
    """label_issues.csv (+ the montage when patient pixels may be shown); a failure costs the list, not the run."""
    from pipeline.results.label_issues import find_issues, write_label_issues

    try:
        first = {}
        for i, s in enumerate(prep.decoded.samples):
            first.setdefault(s.image_text, i)
        pixels = (lambda image: decoded_pixels(cfg, prep.decoded, first[image])) if cfg.tracking.log_images else None
        return write_label_issues(folder, cfg.task, find_issues(cfg.task, outcome.oof), len(outcome.oof), pixels)
    except Exception as exc:
        log.warning(f"label issues not computed: {type(exc).__name__}: {exc}")
        return None


def finish(cfg: Config, folder: RunFolder, prep: Prepared, per_seed: dict[int, list[FoldResult]], tracker: Tracker,
           choice: dict, started: float | None = None) -> Summary:
    """Every output of a finished run, each written once: per-seed folders (repeated seeds), predictions,
    summary.json, deployment.json, the Grad-CAM panel, report.md and the TensorBoard summary."""
    seeds = list(per_seed)
    outcomes = summarize_seeds(cfg, prep, per_seed, started=started)
    if len(seeds) > 1:
        for s, o in outcomes.per_seed.items():
            sub = folder.seed(s, len(seeds))
            write_predictions(sub, o, cfg.task)
            write_summary(sub, o.summary)
            write_report(sub, o.summary.to_json(), o.oof, o.test, seed_config(cfg, s))
    summary = outcomes.run.summary.with_(precision=choice, label_issues=_label_issues(cfg, folder, prep, outcomes.run),
                                         data_checks=data_checks_block(cfg, prep))
    outcome = replace(outcomes.run, summary=summary)
    write_predictions(folder, outcome, cfg.task)
    write_summary(folder, summary)
    trained = next(iter(per_seed.values()))[0] if per_seed and next(iter(per_seed.values())) else None
    deployment = Deployment(
        task=cfg.task, model=cfg.model.model_copy(update={"stem": trained.stem_strategy if trained else cfg.model.stem}),
        normalization=Normalization.from_dict(trained.normalization) if trained else None,
        data=cfg.data, precision=choice["precision"], channels_last=choice["channels_last"],
        threshold=summary.threshold, temperature=(summary.calibration or {}).get("temperature"),
        folds=tuple(f["fold"] for f in summary.folds), seeds=tuple(seeds),
        hide_file_names=cfg.privacy.hide_file_names, extra={"tta": cfg.inference.tta})
    write_deployment(folder, deployment)
    _panel(cfg, folder, prep, outcome, deployment)
    write_report(folder, summary.to_json(), outcome.oof, outcome.test, cfg, tracker)
    write_checklist(folder, summary.to_json(), cfg)
    track_summary(cfg, summary, tracker)
    if len(seeds) == 1:
        tracker.merge_metrics([r.fold for r in per_seed[seeds[0]]])
    return summary


def aggregate(folder: RunFolder, cfg: Config) -> Summary:
    """`--aggregate RUN`: summary, report, predictions and TensorBoard summary from the finished folds
    (fold_K/result.json) of a run whose folds ran as separate processes."""
    if cfg.train.repeats > 1:
        raise ConfigError(f"--aggregate {folder}: runs with train.repeats > 1 are aggregated by the run itself")
    prep = prepare_from_run(cfg, folder)
    n_folds = prep.splits.n_folds
    missing = [k for k in range(n_folds) if not folder.result(k).is_file()]
    if missing:
        running = [k for k in missing if folder.last(k).is_file()]
        raise ConfigError(f"--aggregate {folder}: fold(s) {', '.join(map(str, missing))} of {n_folds} not "
                          f"finished (no fold_K/{RunFolder.RESULT}" + (f"; {', '.join(map(str, running))} started"
                          if running else "") + "); run them with --output-dir RUN --fold K")
    set_track_meta(False)
    results = [FoldResult.from_json(RunFolder.read_json(folder.result(k))) for k in range(n_folds)]
    n = len(prep.decoded.samples)
    if any(i >= n for r in results for i in r.val.indices):
        raise ConfigError(f"--aggregate {folder}: fold results index samples the run's {RunFolder.SAMPLES} lacks")
    choice = RunFolder.read_json(folder.precision) or {
        "auto": False, "precision": cfg.train.precision, "channels_last": cfg.train.channels_last}
    tracker = Tracker(folder.root)
    tracker.text(Tags.CONFIG, "```\n" + folder.config.read_text() + "\n```")
    try:
        return finish(cfg, folder, prep, {cfg.train.seed: results}, tracker, choice)
    finally:
        tracker.close()
