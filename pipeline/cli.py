"""Cross-validated fine-tuning on a config, patients grouped into folds; what train.py runs.

    python train.py --config chest_xray [--set k=v ...]   (the same as `graystem train`)

Exit codes: 0 done, 2 bad input (one line on stderr naming the file, row or key, no traceback),
130 interrupted (the run folder can be continued with --resume).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from pipeline import distributed
from pipeline.cliargs import add_config_arguments
from pipeline.config import (
    Config,
    load_config,
    publish_config,
    resume_changes,
    resume_may_change_text,
    save_config,
)
from pipeline.data import privacy
from pipeline.demo import ensure_demo_data
from pipeline.errors import ConfigError, exits_on_error
from pipeline.logs import log as logger
from pipeline.logs import setup_logging
from pipeline.planrun import auto_plan
from pipeline.runfolder import RunFolder
from pipeline.schema import resolve_data_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument("--output-dir", help="run folder (default: output.dir/<task>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run: finished folds are kept")
    p.add_argument("--fold", type=int, action="append",
                   help="run only this fold (repeatable); several --fold processes may share one --output-dir")
    p.add_argument("--aggregate", metavar="RUN_DIR",
                   help="write summary, report and predictions of a run whose folds ran as separate processes")
    p.add_argument("--dry-run", action="store_true", help="validate config and data, write splits, stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--budget", metavar="TIME", help="with --config auto: the wall time to plan for (90s, 30m, 2h; "
                   "default 30m); the run records RUN/plan.json and the time it took against it")
    p.add_argument("--seeds", type=int, metavar="N", help="repeat the whole CV with training seeds seed .. seed+N-1 "
                   "on the same folds (sets train.repeats)")
    return p


def _run_dir(args, cfg: Config) -> Path:
    if args.resume:
        return Path(args.resume)
    if args.output_dir:
        path = Path(args.output_dir)
    else:
        name = cfg.output.name or f"{cfg.task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = resolve_data_path(cfg.output.dir) / name
    # `--fold K` processes share one RUN: the folder may exist when its config.yaml is this one (checked on write)
    if path.exists() and any(path.iterdir()) and not (args.fold and RunFolder(path).config.is_file()):
        raise ConfigError(f"--output-dir {path}: folder exists and is not empty (use --resume {path} to continue it)")
    return path


def _aggregate(args) -> int:
    from pipeline.results.report import format_table
    from pipeline.train.finish import aggregate

    run_dir = RunFolder(args.aggregate)
    summary = aggregate(run_dir, load_config(str(run_dir.require_config("--aggregate"))))
    logger.info(format_table(summary.to_json()))
    logger.info(f"\nresults in {run_dir} ({RunFolder.REPORT}, {RunFolder.SUMMARY})")
    return 0


@exits_on_error(interrupted="interrupted")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds is not None:
        args.overrides.append(f"train.repeats={args.seeds}")
    setup_logging(quiet=args.quiet)
    log = logger.info
    planned, t_plan = None, time.perf_counter()  # a planned run's budget covers its planning too
    if args.aggregate:
        return _aggregate(args)
    if args.resume:
        saved = RunFolder(args.resume).require_config("--resume")
        cfg = load_config(str(saved), args.overrides)
        changed = resume_changes(load_config(str(saved)), cfg)
        if changed:
            raise ConfigError(f"--resume {args.resume}: --set changes {', '.join(changed)}, which shaped the finished "
                              f"folds; start a new run instead (resume may change only {resume_may_change_text()})")
    else:
        planned = auto_plan(args)
        cfg = planned.load(args.overrides) if planned else load_config(args.config, args.overrides)
    if args.quiet:
        cfg.train.progress = False
    dist, device = distributed.init(cfg.train.device)
    setup_logging(quiet=args.quiet, is_main=dist.is_main)
    # under torchrun rank 0 alone creates the demo data and the run folder, then tells the others
    run_dir, created = None, False
    if dist.is_main:
        ensure_demo_data(cfg, log)
        run_dir = _run_dir(args, cfg)
        created = not run_dir.exists()
        privacy.bind_key(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if args.resume:
            save_config(cfg, RunFolder(run_dir).config)
        else:  # the first of several --fold processes writes it, the others must match it
            publish_config(cfg, RunFolder(run_dir).config)
        if not args.dry_run:  # a dry run names its folder only at the end, and only if it keeps it
            log(f"run folder: {run_dir}")
        if planned is not None:
            planned.write(run_dir)
    run_dir = distributed.broadcast(run_dir, dist)
    from pipeline.results.report import format_table
    from pipeline.results.report_md import format_seeds
    from pipeline.train.run import run

    t0 = time.perf_counter()
    # a --fold process also continues its fold (last.pt) or reuses it (result.json): a requeued array job
    # picks up where it was killed
    with RunFolder(run_dir).cleanup_on_failure(created and dist.is_main):
        summary = run(cfg, run_dir, folds=args.fold, resume=bool(args.resume or args.fold), dry_run=args.dry_run,
                      dist=dist, device=device)
    distributed.shutdown(dist)
    if planned is not None and summary is not None and dist.is_main:
        log(planned.finish(run_dir, time.perf_counter() - t_plan))
    if args.dry_run and created and not args.output_dir and dist.is_main:
        # a dry run checks; it leaves no half-made run folder unless asked for one (--output-dir keeps
        # config.yaml, splits.json and skipped.csv for inspection, or for --fold processes to share)
        shutil.rmtree(run_dir, ignore_errors=True)
        log("dry run: nothing kept (pass --output-dir to keep config.yaml and splits.json)")
    elif args.dry_run and dist.is_main:
        log(f"dry run: config.yaml and splits.json kept in {run_dir}")
    if summary is not None:
        table = summary.to_json()
        log("")
        log(format_table(table))
        if format_seeds(table):
            log(format_seeds(table))
        log(f"\ndone in {time.perf_counter() - t0:.0f}s; results in {run_dir} "
            f"({RunFolder.REPORT}, {RunFolder.SUMMARY}; tensorboard --logdir {RunFolder(run_dir).tensorboard})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
