"""A finished run as inference sees it: its deployment record and the fold checkpoints of every seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from pipeline.model.checkpoint import FoldCheckpoint, load_checkpoint
from pipeline.model.deployment import Deployment
from pipeline.model.stems import Normalization
from pipeline.runfolder import RunFolder
from pipeline.schema import TaskConfig


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run folder offers to inference: the deployment record and the fold checkpoints."""

    folder: RunFolder
    cfg: Config  # the run's config.yaml (privacy settings, the manifest); pixels come from `deployment`
    deployment: Deployment
    checkpoints: tuple[FoldCheckpoint, ...]
    seeds: tuple[int, ...] = ()  # training seeds whose fold models are in `checkpoints` (seed-major order)

    @property
    def run_dir(self) -> Path:
        return self.folder.root

    @property
    def task(self) -> TaskConfig:
        return self.deployment.task

    @property
    def normalization(self) -> Normalization:
        return self.deployment.normalization

    @property
    def threshold(self) -> float:
        return self.deployment.threshold

    def models(self) -> list[nn.Module]:
        return [c.build() for c in self.checkpoints]


def write_deployment(folder: RunFolder, deployment: Deployment) -> None:
    RunFolder.write_json(folder.deployment, deployment.to_json())


def read_deployment(folder: RunFolder) -> Deployment:
    data = RunFolder.read_json(folder.deployment)
    if data is None:
        raise ConfigError(f"{folder}: no {RunFolder.DEPLOYMENT} (the run has not finished: a run of --fold "
                          "processes needs `train.py --aggregate RUN` first)")
    return Deployment.from_json(data)


def load_run(run_dir: Path | RunFolder, folds: list[int] | None = None) -> FinishedRun:
    folder = RunFolder.of(run_dir)
    cfg = load_config(str(folder.require_config("")))
    deployment = read_deployment(folder)
    paths = folder.checkpoint_paths()
    if not paths:
        raise ConfigError(f"{folder}: no fold_K/{RunFolder.BEST} checkpoints (not a finished run folder)")
    seeded = [(cfg.train.seed if s is None else s, load_checkpoint(p)) for s, p in paths]
    if folds is not None:
        missing = sorted(set(folds) - {c.fold for _, c in seeded})
        if missing:
            raise ConfigError(f"--fold {missing[0]}: no fold_{missing[0]}/{RunFolder.BEST} in {folder}")
        seeded = [(s, c) for s, c in seeded if c.fold in folds]
    return FinishedRun(folder, cfg, deployment, tuple(c for _, c in seeded),
                       seeds=tuple(dict.fromkeys(s for s, _ in seeded)))
