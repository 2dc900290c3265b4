"""TensorBoard events, a metrics.jsonl log and the console log, written by rank 0 only.

Every TensorBoard tag is spelled here: fold_K/<stage>/train_loss and fold_K/<stage>/lr per logged step,
fold_K/val/<metric> and fold_K/train/{loss,lr,images_per_s} per epoch (one global epoch axis across stages, so
the curves of both stages join up), summary/cv_mean_<metric> and summary/test_<metric> at the end.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

LOGGER = "graystem"
log = logging.getLogger(LOGGER)


def setup_logging(quiet: bool = False, is_main: bool = True) -> None:
    """Console lines go to stdout as plain messages; quiet runs and non-zero torchrun ranks show warnings only.
    Called by every entry point, so a test's captured stdout receives the lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet or not is_main else logging.INFO)
    logger.propagate = False


class Tags:
    @staticmethod
    def step(fold: int, stage: str, name: str) -> str:
        return f"fold_{fold}/{stage}/{name}"

    @staticmethod
    def val(fold: int, metric: str) -> str:
        return f"fold_{fold}/val/{metric}"

    @staticmethod
    def train(fold: int, name: str) -> str:
        return f"fold_{fold}/train/{name}"

    @staticmethod
    def cv_mean(metric: str) -> str:
        return f"summary/cv_mean_{metric}"

    @staticmethod
    def test(metric: str) -> str:
        return f"summary/test_{metric}"

    CONFIG = "config"


class Tracker:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.jsonl = (run_dir / "metrics.jsonl").open("a")

    def scalar(self, tag: str, value, step: int) -> None:
        if not self.enabled or value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), step)

    def log(self, record: dict) -> None:
        """One JSON line per epoch / event, for tools that do not read TensorBoard files."""
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.jsonl.flush()

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
