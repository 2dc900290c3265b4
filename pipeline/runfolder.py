"""The run folder: every path of its contract, and every read and atomic write of it, in one place.

    RUN/config.yaml  splits.json  samples.json  skipped.csv  precision.json  summary.json  report.md  checklist.md
    RUN/oof_predictions.csv  test_predictions.csv  deployment.json  metrics.jsonl  tensorboard/  FAILED.txt
    RUN/fold_K/{best.pt, last.pt, result.json, metrics.jsonl}      (RUN/seed_S/fold_K/... with repeated seeds)

Other modules ask a `RunFolder` for a path and never spell a file name, so the contract that other tools read
(design notes) is written down once. Several processes may write one run folder (`--fold K` processes, possibly
on machines sharing a file system): `publish_once` gives exactly one writer of the files they share, and every
other write is atomic (temporary file + rename), so a reader sees the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError


class RunFolder:
    CONFIG = "config.yaml"
    SPLITS = "splits.json"
    SAMPLES = "samples.json"
    SKIPPED = "skipped.csv"
    PRECISION = "precision.json"
    SUMMARY = "summary.json"
    REPORT = "report.md"
    OOF = "oof_predictions.csv"
    TEST = "test_predictions.csv"
    EVALUATED = "predictions.csv"  # an evaluation folder's (graystem evaluate --out DIR): one row per image scored
    DEPLOYMENT = "deployment.json"
    PLAN = "plan.json"  # --config auto: the plan and the time the run took against its budget
    METRICS = "metrics.jsonl"
    TENSORBOARD = "tensorboard"
    FAILED = "FAILED.txt"
    CAM_PANEL = "cam_panel.png"
    CHECKLIST = "checklist.md"
    BEST = "best.pt"
    LAST = "last.pt"
    RESULT = "result.json"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def of(cls, run: RunFolder | str | os.PathLike) -> RunFolder:
        return run if isinstance(run, RunFolder) else cls(run)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def __eq__(self, other) -> bool:
        return isinstance(other, RunFolder) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # ---- paths ----------------------------------------------------------------------------------------------
    config = property(lambda self: self.root / self.CONFIG)
    splits = property(lambda self: self.root / self.SPLITS)
    samples = property(lambda self: self.root / self.SAMPLES)
    skipped = property(lambda self: self.root / self.SKIPPED)
    precision = property(lambda self: self.root / self.PRECISION)
    summary = property(lambda self: self.root / self.SUMMARY)
    report = property(lambda self: self.root / self.REPORT)
    oof_predictions = property(lambda self: self.root / self.OOF)
    test_predictions = property(lambda self: self.root / self.TEST)
    evaluated = property(lambda self: self.root / self.EVALUATED)
    deployment = property(lambda self: self.root / self.DEPLOYMENT)
    plan = property(lambda self: self.root / self.PLAN)
    metrics = property(lambda self: self.root / self.METRICS)
    tensorboard = property(lambda self: self.root / self.TENSORBOARD)
    failed = property(lambda self: self.root / self.FAILED)
    cam_panel = property(lambda self: self.root / self.CAM_PANEL)
    checklist = property(lambda self: self.root / self.CHECKLIST)

    def file(self, name: str) -> Path:
        """A file of the run beside the contract's (plots and tables that report.md links)."""
        return self.root / name

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{fold}"

    def best(self, fold: int) -> Path:
        return self.fold_dir(fold) / self.BEST

    def last(self, fold: int) -> Path:
        return self.fold_dir(fold) / self.LAST

    def result(self, fold: int) -> Path:
        """Written last by a fold: its presence marks the fold finished (for --resume and --aggregate)."""
        return self.fold_dir(fold) / self.RESULT

    def fold_metrics(self, fold: int) -> Path:
        return self.fold_dir(fold) / self.METRICS

    def fold_events(self, fold: int) -> Path:
        return self.tensorboard / f"fold_{fold}"

    def seed(self, seed: int, n_seeds: int) -> RunFolder:
        """Where one seed's fold folders live: the run folder itself for a single seed (fold_K/, as always), and
        seed_S/ (S the training seed) for each seed when the CV is repeated (train.repeats > 1)."""
        return self if n_seeds == 1 else RunFolder(self.root / f"seed_{seed}")

    def checkpoint_paths(self) -> list[tuple[int | None, Path]]:
        """(seed or None for the single-seed layout, path) of every fold's best.pt, by seed then fold."""
        found = [(None, p) for p in self.root.glob(f"fold_*/{self.BEST}")]
        found += [(int(p.parent.parent.name.split("_")[1]), p) for p in self.root.glob(f"seed_*/fold_*/{self.BEST}")]
        return sorted(found, key=lambda sp: (-1 if sp[0] is None else sp[0], int(sp[1].parent.name.split("_")[1])))

    def require_config(self, flag: str) -> Path:
        """config.yaml of an existing run, or the one-line error a command given another folder prints."""
        if not self.config.is_file():
            raise ConfigError(f"{flag}{' ' if flag else ''}{self.root}: no {self.CONFIG} there (not a run folder)")
        return self.config

    # ---- reads and atomic writes ----------------------------------------------------------------------------
    @staticmethod
    def read_json(path: Path, default=None):
        return json.loads(path.read_text()) if path.is_file() else default

    @staticmethod
    def write_text(path: Path, text: str) -> None:
        """Atomic rewrite (temporary file + os.replace): a reader sees the old or the new file, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    @classmethod
    def write_json(cls, path: Path, obj) -> None:
        cls.write_text(path, json.dumps(obj, indent=1))

    @staticmethod
    def publish_once(path: Path, text: str) -> str | None:
        """Write `text` to `path` unless it exists; None when this call wrote it, else the existing content.
        Each writer writes a temporary file and hard-links it to the final name; link(2) fails when the name
        exists (O_EXCL semantics, also on NFS), so the first is kept whole and every later writer compares its
        own content with it instead."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            try:
                os.link(tmp, path)
                return None
            except FileExistsError:
                return path.read_text()
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def save_torch(obj, path: Path) -> None:
        """torch.save to a temporary file in the same folder, then rename: readers see the old or the new file."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(obj, fh)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise PipelineError(f"{path}: disk full while writing (nothing half-written is left); free space "
                                    "and continue with --resume") from None
            raise

    # ---- a start that fails -----------------------------------------------------------------------------------
    def training_started(self) -> bool:
        return self.metrics.exists() or any(self.root.glob("fold_*"))

    @contextlib.contextmanager
    def cleanup_on_failure(self, created: bool):
        """A start that fails before training (bad row, leak, emptied class) would otherwise leave a folder holding
        only config.yaml, which then blocks the same --output-dir and litters output.dir. Only a folder this call
        created is removed; one with a skipped.csv is kept (the error points to it) and marked with FAILED.txt.
        Ctrl-C names the folder to resume."""
        try:
            yield
        except KeyboardInterrupt:
            if not self.training_started():
                if created:
                    shutil.rmtree(self.root, ignore_errors=True)
                raise KeyboardInterrupt("interrupted before training; nothing to resume") from None
            raise KeyboardInterrupt(f"interrupted; continue with --resume {self.root}") from None
        except PipelineError as exc:
            if created and self.root.is_dir() and not self.training_started():
                if self.skipped.exists():
                    self.failed.write_text(f"error: {exc}\n")
                else:
                    shutil.rmtree(self.root, ignore_errors=True)
            raise
