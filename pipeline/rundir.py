"""A run folder that a failed start leaves behind is removed (or marked failed), and Ctrl-C names it.

A start that fails before training (bad row, leak, emptied class) would otherwise leave a folder holding only
config.yaml, which then blocks the same --output-dir and litters output.dir. Only a folder this call created is
removed; one with a skipped.csv is kept (the error points to it) and marked with FAILED.txt.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from pipeline.errors import PipelineError


def training_started(run_dir: Path) -> bool:
    return (run_dir / "metrics.jsonl").exists() or any(run_dir.glob("fold_*"))


@contextlib.contextmanager
def cleanup_on_failure(run_dir: Path, created: bool):
    try:
        yield
    except KeyboardInterrupt:
        if run_dir is None or not training_started(run_dir):
            if created and run_dir is not None:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise KeyboardInterrupt("interrupted before training; nothing to resume") from None
        raise KeyboardInterrupt(f"interrupted; continue with --resume {run_dir}") from None
    except PipelineError as exc:
        if created and run_dir is not None and run_dir.is_dir() and not training_started(run_dir):
            if (run_dir / "skipped.csv").exists():
                (run_dir / "FAILED.txt").write_text(f"error: {exc}\n")
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
