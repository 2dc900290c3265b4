"""The run folder's model files, written and read in one place (as MAE's misc.save_model / load_model).

`fold_K/best.pt` holds the fold's best weights and everything that rebuilds and feeds the model: model config,
resolved stem, input normalisation, task, the data settings that shape the pixels, and the epoch and stage it
came from. Files are written atomically (temporary file + os.replace), so a kill never leaves half a checkpoint,
and read with `weights_only=True`, which refuses pickled code.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.config import Config, ModelConfig, TaskConfig, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.model.stems import Normalization

BEST = "best.pt"


@dataclass(frozen=True)
class FoldCheckpoint:
    fold: int
    state_dict: dict = field(repr=False)
    model: ModelConfig  # with `stem` resolved (never `auto`)
    task: TaskConfig
    normalization: Normalization
    pixels: dict  # DataConfig.pixel_settings() of the run: how files must be read for this model
    best_epoch: int | None = None
    stage: str | None = None

    @property
    def image_size(self) -> int:
        return int(self.pixels["image_size"])

    def build(self) -> nn.Module:
        """The fold model in eval mode, rebuilt without loading any pretrained weights."""
        from pipeline.model.models import build_model

        built = build_model(self.model, self.task.num_outputs, pretrained="none")
        built.model.load_state_dict(self.state_dict)
        return built.model.eval()

    def to_dict(self) -> dict:
        return {"fold": self.fold, "state_dict": self.state_dict, "model": self.model.model_dump(mode="json"),
                "task": self.task.model_dump(mode="json"), "normalization": self.normalization.to_dict(),
                "pixels": self.pixels, "best_epoch": self.best_epoch, "stage": self.stage}

    @classmethod
    def from_dict(cls, d: dict) -> FoldCheckpoint:
        norm = d["normalization"]
        return cls(fold=d["fold"], state_dict=d["state_dict"], model=ModelConfig(**d["model"]),
                   task=TaskConfig(**d["task"]), normalization=Normalization(tuple(norm["mean"]), tuple(norm["std"])),
                   pixels=d["pixels"], best_epoch=d.get("best_epoch"), stage=d.get("stage"))


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: readers see the old or the new file."""
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


def save_checkpoint(ckpt: FoldCheckpoint, path: Path) -> None:
    atomic_save(ckpt.to_dict(), path)


def load_checkpoint(path: Path) -> FoldCheckpoint:
    try:
        return FoldCheckpoint.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a checkpoint of this pipeline (missing {exc})") from None


def fold_checkpoint_path(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold}" / BEST


def seed_dir(run_dir: Path, seed: int, n_seeds: int) -> Path:
    """Where one seed's fold folders live: the run folder itself for a single seed (fold_K/, as always), and
    seed_S/ (S the training seed) for each seed when the CV is repeated (train.repeats > 1)."""
    return Path(run_dir) if n_seeds == 1 else Path(run_dir) / f"seed_{seed}"


def _checkpoint_paths(run_dir: Path) -> list[tuple[int | None, Path]]:
    """(seed or None for the single-seed layout, path) of every fold checkpoint, by seed then fold."""
    found = [(None, p) for p in run_dir.glob(f"fold_*/{BEST}")]
    found += [(int(p.parent.parent.name.split("_")[1]), p) for p in run_dir.glob(f"seed_*/fold_*/{BEST}")]
    return sorted(found, key=lambda sp: (sp[0] if sp[0] is not None else -1, int(sp[1].parent.name.split("_")[1])))


@dataclass(frozen=True)
class FinishedRun:
    """What a finished run folder offers to inference: its config, fold checkpoints and operating point."""

    run_dir: Path
    cfg: Config
    checkpoints: tuple[FoldCheckpoint, ...]
    threshold: float  # the run's operating point (summary.json), 0.5 before the run chose one
    seeds: tuple[int, ...] = ()  # training seeds whose fold models are in `checkpoints` (seed-major order)

    @property
    def task(self) -> TaskConfig:
        return self.checkpoints[0].task

    @property
    def normalization(self) -> Normalization:
        return self.checkpoints[0].normalization

    def models(self) -> list[nn.Module]:
        return [c.build() for c in self.checkpoints]


def load_run(run_dir: Path, folds: list[int] | None = None) -> FinishedRun:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: no config.yaml there (not a run folder)")
    paths = _checkpoint_paths(run_dir)
    if not paths:
        raise ConfigError(f"{run_dir}: no fold_K/{BEST} checkpoints (not a finished run folder)")
    cfg = load_config(str(run_dir / "config.yaml"))
    seeded = [(cfg.train.seed if s is None else s, load_checkpoint(p)) for s, p in paths]
    if folds is not None:
        missing = sorted(set(folds) - {c.fold for _, c in seeded})
        if missing:
            raise ConfigError(f"--fold {missing[0]}: no fold_{missing[0]}/{BEST} in {run_dir}")
        seeded = [(s, c) for s, c in seeded if c.fold in folds]
    summary = run_dir / "summary.json"
    threshold = json.loads(summary.read_text()).get("threshold", 0.5) if summary.is_file() else 0.5
    return FinishedRun(run_dir, cfg, tuple(c for _, c in seeded), float(threshold),
                       seeds=tuple(dict.fromkeys(s for s, _ in seeded)))


# ---- resume mid-fold: fold_K/last.pt ----------------------------------------------------------------------------
#
# Written after every finished epoch (atomically) and read with weights_only=True, so everything in it is a
# tensor, a number, a string or a list/dict of them: RNG states are converted (numpy's and Python's tuples into
# tensors and lists) rather than pickled. The FoldState's metrics and history travel as a JSON string, which
# round-trips Python floats exactly and keeps numpy scalars out of the pickle.

LAST = "last.pt"


def last_checkpoint_path(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold_{fold}" / LAST


def _np_state(state) -> dict:
    """numpy's ('MT19937', keys, pos, has_gauss, cached_gaussian) as weights_only-safe values."""
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _np_tuple(d: dict):
    import numpy as np

    return d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"]


def _random_states(obj, out: list, seen: set) -> list:
    """The numpy RandomState of every MONAI Randomizable reachable from `obj`, in the order monai's set_rnd
    visits them (monai.data.DataLoader seeds them once, at construction, when num_workers=0; after that each
    transform's own RandomState moves on from epoch to epoch, so a resume must restore it)."""
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, (tuple, list)):
        for item in obj:
            _random_states(item, out, seen)
        return out
    if not hasattr(obj, "__dict__"):
        return out
    if hasattr(obj, "set_random_state"):
        out.append(obj)
        # a Compose/OneOf is Randomizable too and holds transforms: keep walking into it
    for key, value in vars(obj).items():
        if not key.startswith("__"):
            _random_states(value, out, seen)
    return out


def randomizables(obj) -> list:
    return [o for o in _random_states(obj, [], set()) if hasattr(o, "R")]


def capture_rng(random_objects=()) -> dict:
    """Every RNG a training epoch draws from: torch (CPU and CUDA), numpy, Python and the transforms' own."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": _np_state(np.random.get_state()),
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "transforms": [_np_state(o.R.get_state()) for o in random_objects],
    }


def restore_rng(state: dict, random_objects=()) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_np_tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if len(state["transforms"]) != len(random_objects):
        raise ConfigError(f"{LAST}: {len(state['transforms'])} random transforms saved, {len(random_objects)} "
                          "in this run's augmentation (was the augment config changed? start the fold again by "
                          f"deleting {LAST})")
    for obj, s in zip(random_objects, state["transforms"], strict=True):
        obj.R.set_state(_np_tuple(s))


@dataclass
class ResumeState:
    """A fold interrupted after a finished epoch: where to go on and everything needed to go on identically."""

    fold: int
    stage_index: int  # the stage to run next (== number of stages: training is over, predictions are not)
    epoch_in_stage: int  # epochs of that stage already done; 0: the stage starts fresh (new optimiser)
    stage_step: int  # optimiser steps of that stage already done (the scheduler's position)
    model: dict = field(repr=False)
    optimizer: dict | None = field(default=None, repr=False)
    scheduler: dict | None = field(default=None, repr=False)
    scaler: dict | None = field(default=None, repr=False)
    fold_state: str = "{}"  # stages.FoldState without best_state, as JSON
    best_state: dict | None = field(default=None, repr=False)
    rng: dict = field(default_factory=dict, repr=False)
    logs: dict = field(default_factory=dict)  # {file relative to the run folder: bytes at save time}

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> ResumeState:
        return cls(**d)


def save_resume(state: ResumeState, path: Path) -> None:
    atomic_save(state.to_dict(), path)


def load_resume(path: Path) -> ResumeState | None:
    """None when there is no last.pt. A half-written one cannot exist (atomic_save)."""
    if not Path(path).is_file():
        return None
    try:
        return ResumeState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a resume checkpoint of this pipeline ({exc}); delete it to start the "
                          "fold again") from None
