"""TensorBoard events, metrics.jsonl logs and the console log, written by rank 0 only.

TensorBoard layout (as MONAI and Lightning users expect: one run per fold, so folds overlay on one chart):
RUN/tensorboard/fold_K/ holds that fold's `<stage>/train_loss` and `<stage>/lr` per logged step,
`val/<metric>` and `train/{loss,lr,images_per_s}` per epoch (one global epoch axis across stages, so the
stages join up), `inputs/train` (a grid of augmented training inputs, un-normalised) at the fold's start and
`val/pr_curve[/<class>]` at the best epoch; RUN/tensorboard/summary/ holds `summary/cv_mean_<metric>`,
`summary/test_<metric>`, the `figures/<name>` ROC, calibration and confusion-matrix plots, the resolved
`config` text and the hparams entry (`hparams/<metric>`) that the HParams tab compares across runs.
Every tag is spelled in `Tags`.

Every file has one writer, so folds can run as separate processes (even on separate machines) into one run
folder: fold K's events go to RUN/tensorboard/fold_K/ and its JSON lines to RUN/fold_K/metrics.jsonl; the run's
own events to RUN/tensorboard/summary/ (opened on first use, so fold-only processes write none), and
RUN/metrics.jsonl is assembled from the folds' lines when the summary is written.

Resuming a fold drops the records of the epochs it redoes: last.pt stores the byte size of the fold's log files
at the checkpoint (after a flush, so at a record boundary) and `start_fold` truncates them back to it. (Not
SummaryWriter(purge_step=N): TensorBoard then drops every event with step >= N of every tag in that folder, but
a fold's step tags count optimiser steps and its epoch tags count epochs, so no single N is right for both.)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from pipeline.runfolder import RunFolder


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

    @staticmethod
    def fold_events(run_dir: Path, fold: int) -> Path:
        return RunFolder(run_dir).fold_events(fold)

    @staticmethod
    def fold_metrics(run_dir: Path, fold: int) -> Path:
        return RunFolder(run_dir).fold_metrics(fold)


class Tracker:
    """`fold=K` sends an event to tensorboard/fold_K/ (opened by start_fold), no fold to tensorboard/summary/."""

    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = True,
                 log_images: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None  # None: a disabled tracker
        self.enabled = enabled and run_dir is not None
        self.tensorboard = tensorboard
        self.log_images = log_images
        self.writer = None  # the run's own events; opened on first use
        self.fold_writers: dict = {}
        self.fold_jsonl: dict = {}

    def _writer(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(log_dir))

    def _target(self, fold: int | None):
        if not self.enabled or not self.tensorboard:
            return None
        if fold is not None:
            return self.fold_writers.get(fold)
        if self.writer is None:
            self.writer = self._writer(RunFolder(self.run_dir).tensorboard / Tags.SUMMARY_RUN)
        return self.writer

    def start_fold(self, fold: int, keep: dict | None) -> None:
        """Open fold K's event folder and metrics.jsonl. `keep` ({relative path: bytes}, from last.pt) cuts
        them back to the checkpoint; None starts the fold's records afresh (a fold restarted from its first
        epoch must not keep the lines of an attempt that was killed before its first checkpoint)."""
        if not self.enabled:
            return
        keep = keep or {}
        events, jsonl = Tags.fold_events(self.run_dir, fold), Tags.fold_metrics(self.run_dir, fold)
        for path in [*sorted(events.glob("events.out.tfevents.*")), jsonl]:
            if not path.exists():
                continue
            size = keep.get(str(path.relative_to(self.run_dir)))
            if size is None:
                path.unlink()
            else:
                os.truncate(path, size)
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        self.fold_jsonl[fold] = jsonl.open("a")
        if self.tensorboard:
            self.fold_writers[fold] = self._writer(events)

    def fold_sizes(self, fold: int) -> dict:
        """Flush fold K's files and return their sizes (what a resume cuts back to)."""
        if not self.enabled:
            return {}
        if fold in self.fold_writers:
            self.fold_writers[fold].flush()
        self.fold_jsonl[fold].flush()
        paths = [*Tags.fold_events(self.run_dir, fold).glob("events.out.tfevents.*"),
                 Tags.fold_metrics(self.run_dir, fold)]
        return {str(p.relative_to(self.run_dir)): p.stat().st_size for p in paths if p.exists()}

    def end_fold(self, fold: int) -> None:
        if fold in self.fold_writers:
            self.fold_writers.pop(fold).close()
        if fold in self.fold_jsonl:
            self.fold_jsonl.pop(fold).close()

    def scalar(self, tag: str, value, step: int, fold: int | None = None) -> None:
        if not self.enabled or value is None or (isinstance(value, float) and math.isnan(value)):
            return
        writer = self._target(fold)
        if writer is not None:
            writer.add_scalar(tag, float(value), step)

    def log(self, record: dict) -> None:
        """One JSON line per epoch / event of a fold (record['fold']), for tools that do not read TensorBoard."""
        fh = self.fold_jsonl.get(record.get("fold")) if self.enabled else None
        if fh is None:
            return
        fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        fh.flush()

    def merge_metrics(self, folds) -> None:
        """RUN/metrics.jsonl: every fold's lines, fold by fold (written once, when the summary is)."""
        if not self.enabled:
            return
        lines = []
        for k in folds:
            path = Tags.fold_metrics(self.run_dir, k)
            if path.exists():
                lines.append(path.read_text())
        RunFolder.write_text(RunFolder(self.run_dir).metrics, "".join(lines))

    def text(self, tag: str, text: str, fold: int | None = None) -> None:
        if (w := self._target(fold)) is not None:
            w.add_text(tag, text)

    def images(self, fold: int, batch, step: int = 0) -> None:
        """A grid of images (N x C x H x W, values in [0, 1]); nothing when tracking.log_images is off."""
        if not self.log_images or (w := self._target(fold)) is None:
            return
        from torchvision.utils import make_grid

        w.add_image(Tags.INPUTS, make_grid(batch, nrow=8, padding=2, pad_value=1.0), step)

    def pr_curves(self, fold: int, task, targets, probs, step: int) -> None:
        """Precision-recall curves of the validation predictions: one per class, or one for a binary task."""
        import numpy as np

        if (w := self._target(fold)) is None:
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
        if (w := self._target(None)) is not None:
            w.add_figure(Tags.figure(name), fig, close=False)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """The HParams tab's entry, written into the summary run itself (as Lightning does) rather than the
        timestamped sub-folder SummaryWriter.add_hparams would make."""
        if (w := self._target(None)) is None:
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
        for w in [self.writer, *self.fold_writers.values()]:
            if w is not None:
                w.flush()

    def close(self) -> None:
        for k in list(self.fold_writers) + list(self.fold_jsonl):
            self.end_fold(k)
        if self.writer is not None:
            self.writer.close()
