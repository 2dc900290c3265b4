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
from pipeline.config import Config, load_config, resume_changes, save_config
from pipeline.data import privacy
from pipeline.data.manifest import resolve_data_path
from pipeline.demo import ensure_demo_data
from pipeline.errors import ConfigError, exits_on_error
from pipeline.logs import log as logger
from pipeline.logs import setup_logging
from pipeline.rundir import cleanup_on_failure
from pipeline.runfolder import publish_config


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
        path = resolve_data_path(cfg.output.dir, cfg) / name
    # `--fold K` processes share one RUN: the folder may exist when its config.yaml is this one (checked on write)
    if path.exists() and any(path.iterdir()) and not (args.fold and (path / "config.yaml").is_file()):
        raise ConfigError(f"--output-dir {path}: folder exists and is not empty (use --resume {path} to continue it)")
    return path


def _aggregate(args) -> int:
    from pipeline.results.report import format_table
    from pipeline.train.run import aggregate

    run_dir = Path(args.aggregate)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--aggregate {run_dir}: no config.yaml there (not a run folder)")
    summary = aggregate(run_dir, load_config(str(saved)))
    logger.info(format_table(summary))
    logger.info(f"\nresults in {run_dir} (report.md, summary.json)")
    return 0


@exits_on_error(interrupted="interrupted")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds is not None:
        args.overrides.append(f"train.repeats={args.seeds}")
    setup_logging(quiet=args.quiet)
    log = logger.info
    if args.aggregate:
        return _aggregate(args)
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there (not a run folder)")
        cfg = load_config(str(saved), args.overrides)
        changed = resume_changes(load_config(str(saved)), cfg)
        if changed:
            raise ConfigError(f"--resume {args.resume}: --set changes {', '.join(changed)}, which shaped the finished "
                              "folds; start a new run instead (resume may change only train.progress, "
                              "train.log_every, train.device, data.num_workers, report.*, tracking.*, output.*)")
    else:
        cfg = load_config(args.config, args.overrides)
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
            save_config(cfg, run_dir / "config.yaml")
        else:  # the first of several --fold processes writes it, the others must match it
            publish_config(cfg, run_dir / "config.yaml")
        if not args.dry_run:  # a dry run names its folder only at the end, and only if it keeps it
            log(f"run folder: {run_dir}")
    run_dir = distributed.broadcast(run_dir, dist)
    from pipeline.results.report import format_table
    from pipeline.train.run import run
    from pipeline.train.seeds import format_seeds

    t0 = time.perf_counter()
    # a --fold process also continues its fold (last.pt) or reuses it (result.json): a requeued array job
    # picks up where it was killed
    with cleanup_on_failure(run_dir, created and dist.is_main):
        summary = run(cfg, run_dir, folds=args.fold, resume=bool(args.resume or args.fold), dry_run=args.dry_run,
                      dist=dist, device=device)
    distributed.shutdown(dist)
    if args.dry_run and created and not args.output_dir and dist.is_main:
        # a dry run checks; it leaves no half-made run folder unless asked for one (--output-dir keeps
        # config.yaml, splits.json and skipped.csv for inspection, or for --fold processes to share)
        shutil.rmtree(run_dir, ignore_errors=True)
        log("dry run: nothing kept (pass --output-dir to keep config.yaml and splits.json)")
    elif args.dry_run and dist.is_main:
        log(f"dry run: config.yaml and splits.json kept in {run_dir}")
    if summary is not None:
        log("")
        log(format_table(summary))
        if format_seeds(summary):
            log(format_seeds(summary))
        log(f"\ndone in {time.perf_counter() - t0:.0f}s; results in {run_dir} "
            f"(report.md, summary.json; tensorboard --logdir {run_dir / 'tensorboard'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
