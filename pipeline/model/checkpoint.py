"""The run folder's model files, written and read in one place (as MAE's misc.save_model / load_model).

A fold's best.pt holds the fold's best weights and everything that rebuilds and feeds the model: model config,
resolved stem, input normalisation, task, the data settings that shape the pixels, and the epoch and stage it
came from. Files are written atomically (RunFolder.save_torch), so a kill never leaves half a checkpoint,
and read with `weights_only=True`, which refuses pickled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.model.stems import Normalization
from pipeline.runfolder import RunFolder
from pipeline.schema import ModelConfig, TaskConfig


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


def save_checkpoint(ckpt: FoldCheckpoint, path: Path) -> None:
    RunFolder.save_torch(ckpt.to_dict(), path)


def load_checkpoint(path: Path) -> FoldCheckpoint:
    try:
        return FoldCheckpoint.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a checkpoint of this pipeline (missing {exc})") from None


# ---- resume mid-fold: fold_K/last.pt ----------------------------------------------------------------------------
#
# Written after every finished epoch (atomically) and read with weights_only=True, so everything in it is a
# tensor, a number, a string or a list/dict of them: RNG states are converted (numpy's and Python's tuples into
# tensors and lists) rather than pickled. The FoldState's metrics and history travel as a JSON string, which
# round-trips Python floats exactly and keeps numpy scalars out of the pickle.

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
        raise ConfigError(f"{RunFolder.LAST}: {len(state['transforms'])} random transforms saved, {len(random_objects)} "
                          "in this run's augmentation (was the augment config changed? start the fold again by "
                          f"deleting {RunFolder.LAST})")
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
    ema: dict | None = field(default=None, repr=False)  # the stage's weight average (train.ema), when on
    rng: dict = field(default_factory=dict, repr=False)
    logs: dict = field(default_factory=dict)  # {file relative to the run folder: bytes at save time}

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> ResumeState:
        return cls(**d)


def save_resume(state: ResumeState, path: Path) -> None:
    RunFolder.save_torch(state.to_dict(), path)


def load_resume(path: Path) -> ResumeState | None:
    """None when there is no last.pt. A half-written one cannot exist (atomic_save)."""
    if not Path(path).is_file():
        return None
    try:
        return ResumeState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a resume checkpoint of this pipeline ({exc}); delete it to start the "
                          "fold again") from None
