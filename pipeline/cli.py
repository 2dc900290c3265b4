"""Command line: `python train.py --config chest_xray [--set k=v ...]`.

Exit codes: 0 done, 2 bad input (one line on stderr naming the file, row or key, no traceback),
130 interrupted (the run folder can be continued with --resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from . import distributed
from .config import CONFIG_DIR, Config, load_config, save_config
from .errors import ConfigError, PipelineError
from .manifest import resolve_data_path
from .tracking import log as logger
from .tracking import setup_logging

PROJECT_ROOT = CONFIG_DIR.parent


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """--config and --set, the same for train.py and the scripts that read a config."""
    p.add_argument("--config", default="chest_xray", help="YAML file, or a name in configs/ (default chest_xray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.batch_size=16 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    add_config_arguments(p)
    p.add_argument("--output-dir", help="run folder (default: output.dir/<task>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run: finished folds are kept")
    p.add_argument("--fold", type=int, action="append", help="run only this fold (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="validate config and data, write splits, stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def ensure_demo_data(cfg: Config, log=print) -> None:
    """The built-in configs point at generated demo data: make it on first use, and again when the generator
    changed (make_demo compares the version marker it wrote and does nothing when the data are current)."""
    if not cfg.data.demo:
        return
    script = PROJECT_ROOT / "scripts" / "make_demo_data.py"
    target = resolve_data_path(cfg.data.manifest, cfg)
    if not script.is_file():
        if target.is_file():
            return
        raise ConfigError(f"data.demo: {script} is missing; generate the demo data or point data.manifest at your data")
    folder = target.parent  # the demo manifest sits at <root>/<dataset>/labels.csv
    if folder.exists() and not (folder / ".complete").is_file():
        # never rewrite a folder the generator did not make (data.demo left on while pointing at real data)
        if target.is_file():
            return
        raise ConfigError(f"data.demo: {folder} exists but holds no generated demo data; remove data.demo or the folder")
    spec = importlib.util.spec_from_file_location("make_demo_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    marker = folder / ".complete"
    if target.is_file() and marker.is_file() and f"version={module.VERSION} " in marker.read_text():
        return  # current demo data (whatever its size): leave it alone
    t0 = time.perf_counter()
    module.make_demo(folder.parent, which=(cfg.data.demo,))
    log(f"generated demo data '{cfg.data.demo}' in {folder} ({time.perf_counter() - t0:.1f}s)")


def _run_dir(args, cfg: Config) -> Path:
    if args.resume:
        return Path(args.resume)
    if args.output_dir:
        path = Path(args.output_dir)
    else:
        name = cfg.output.name or f"{cfg.task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = resolve_data_path(cfg.output.dir, cfg) / name
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"--output-dir {path}: folder exists and is not empty (use --resume {path} to continue it)")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    log = logger.info
    try:
        if args.resume:
            saved = Path(args.resume) / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"--resume {args.resume}: no config.yaml there (not a run folder)")
            cfg = load_config(str(saved), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.quiet:
            cfg.train.progress = False
        dist, device = distributed.init(cfg.train.device)
        setup_logging(quiet=args.quiet, is_main=dist.is_main)
        # under torchrun rank 0 alone creates the demo data and the run folder, then tells the others
        run_dir = None
        if dist.is_main:
            ensure_demo_data(cfg, log)
            run_dir = _run_dir(args, cfg)
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            log(f"run folder: {run_dir}")
        run_dir = distributed.broadcast(run_dir, dist)
        from .report import format_table
        from .run import run

        t0 = time.perf_counter()
        summary = run(cfg, run_dir, folds=args.fold, resume=bool(args.resume), dry_run=args.dry_run,
                      dist=dist, device=device)
        distributed.shutdown(dist)
        if summary is not None:
            log("")
            log(format_table(summary))
            log(f"\ndone in {time.perf_counter() - t0:.0f}s; results in {run_dir} "
                f"(report.md, summary.json; tensorboard --logdir {run_dir / 'tensorboard'})")
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
