"""TensorBoard events, a metrics.jsonl log and the console log, written by rank 0 only.

TensorBoard layout (as MONAI and Lightning users expect: one run per fold, so folds overlay on one chart):
RUN/tensorboard/fold_K/ holds that fold's `<stage>/train_loss` and `<stage>/lr` per logged step,
`val/<metric>` and `train/{loss,lr,images_per_s}` per epoch (one global epoch axis across stages, so the
stages join up), `inputs/train` (a grid of augmented training inputs, un-normalised) at the fold's start and
`val/pr_curve[/<class>]` at the best epoch; RUN/tensorboard/summary/ holds `summary/cv_mean_<metric>`,
`summary/test_<metric>`, the `figures/<name>` ROC, calibration and confusion-matrix plots, the resolved
`config` text and the hparams entry (`hparams/<metric>`) that the HParams tab compares across runs.
Every tag is spelled in `Tags`.
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
    def step(stage: str, name: str) -> str:
        return f"{stage}/{name}"

    @staticmethod
    def val(metric: str) -> str:
        return f"val/{metric}"

    @staticmethod
    def train(name: str) -> str:
        return f"train/{name}"

    @staticmethod
    def pr_curve(cls: str | None = None) -> str:
        return "val/pr_curve" + (f"/{cls}" if cls else "")

    @staticmethod
    def cv_mean(metric: str) -> str:
        return f"summary/cv_mean_{metric}"

    @staticmethod
    def test(metric: str) -> str:
        return f"summary/test_{metric}"

    @staticmethod
    def figure(name: str) -> str:
        return f"figures/{name}"

    @staticmethod
    def hparam_metric(name: str) -> str:
        return f"hparams/{name}"

    INPUTS = "inputs/train"
    CONFIG = "config"
    SUMMARY_RUN = "summary"  # the event folder of the end-of-run items

    @staticmethod
    def fold_run(fold: int) -> str:
        return f"fold_{fold}"


class Tracker:
    """`fold=K` sends an event to tensorboard/fold_K/, no fold to tensorboard/summary/."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, log_images: bool = True):
        self.enabled = enabled
        self.log_images = log_images
        self.root = run_dir / "tensorboard" if run_dir is not None else None
        self.writers: dict = {}
        self.tensorboard = enabled and tensorboard
        self.jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None

    def writer(self, fold: int | None = None):
        if not self.tensorboard:
            return None
        name = Tags.SUMMARY_RUN if fold is None else Tags.fold_run(fold)
        if name not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            self.writers[name] = SummaryWriter(log_dir=str(self.root / name))
        return self.writers[name]

    def scalar(self, tag: str, value, step: int, fold: int | None = None) -> None:
        if not self.enabled or value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if (w := self.writer(fold)) is not None:
            w.add_scalar(tag, float(value), step)

    def log(self, record: dict) -> None:
        """One JSON line per epoch / event, for tools that do not read TensorBoard files."""
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        self.jsonl.flush()

    def text(self, tag: str, text: str) -> None:
        if (w := self.writer()) is not None:
            w.add_text(tag, text)

    def images(self, fold: int, batch, step: int = 0) -> None:
        """A grid of images (N x C x H x W, values in [0, 1]); nothing when tracking.log_images is off."""
        if not self.log_images or (w := self.writer(fold)) is None:
            return
        from torchvision.utils import make_grid

        w.add_image(Tags.INPUTS, make_grid(batch, nrow=8, padding=2, pad_value=1.0), step)

    def pr_curves(self, fold: int, task, targets, probs, step: int) -> None:
        """Precision-recall curves of the validation predictions: one per class, or one for a binary task."""
        import numpy as np

        if (w := self.writer(fold)) is None:
            return
        y, p = np.asarray(targets, dtype=float), np.asarray(probs, dtype=float)
        if task.type == "binary":
            w.add_pr_curve(Tags.pr_curve(), y.astype(int), p.reshape(-1), step)
            return
        for i, c in enumerate(task.classes):
            yi = (y == i) if task.type == "multiclass" else y[:, i]
            known = ~np.isnan(yi.astype(float))
            w.add_pr_curve(Tags.pr_curve(c), yi[known].astype(int), p[known, i], step)

    def figure(self, name: str, fig) -> None:
        if (w := self.writer()) is not None:
            w.add_figure(Tags.figure(name), fig, close=False)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """The HParams tab's entry, written into the summary run itself (as Lightning does) rather than the
        timestamped sub-folder SummaryWriter.add_hparams would make."""
        if (w := self.writer()) is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {Tags.hparam_metric(k): float(v) for k, v in metrics.items() if v is not None}
        exp, ssi, sei = hparams_summary(hparams, metrics)
        fw = w._get_file_writer()
        for s in (exp, ssi, sei):
            fw.add_summary(s)
        for k, v in metrics.items():
            w.add_scalar(k, v, 0)

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        if self.jsonl is not None:
            self.jsonl.close()
