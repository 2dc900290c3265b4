"""TensorBoard events and a metrics.jsonl log, written by rank 0 only.

Tags: fold_K/<stage>/train_loss, fold_K/<stage>/lr (per logged step), fold_K/val/<metric> (per epoch, on a
global epoch axis across stages so the curves of both stages join up), summary/<metric> at the end.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


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
