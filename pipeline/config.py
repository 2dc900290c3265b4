"""Run configuration: a pydantic schema, YAML loading, `--set` overrides and saving.

Unknown keys and wrong types are errors that name the key (a typo such as `lerning_rate` must not be
silently ignored and leave a default in force).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: ships in the wheel
# a source checkout (pyproject.toml beside the package) is a second base for relative data paths, so
# `--config configs/x.yaml` finds data/ from any working directory; an installed package has none
_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() else None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Strict):
    name: str = "task"
    type: Literal["binary", "multiclass", "multilabel"] = "binary"
    classes: list[str]
    # binary: the class whose probability is scored (AUROC etc.); default the last class
    positive_class: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: duplicate class names")
        if self.type == "binary" and len(self.classes) != 2:
            raise ValueError(f"classes: a binary task needs exactly 2 classes, got {len(self.classes)}")
        if self.type != "binary" and len(self.classes) < 2:
            raise ValueError("classes: need at least 2 classes")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ValueError(f"positive_class: '{self.positive_class}' is not one of {self.classes}")
        return self

    @property
    def positive(self) -> str:
        return self.positive_class or self.classes[-1]

    @property
    def negative(self) -> str:
        return next(c for c in self.classes if c != self.positive)

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "binary" else len(self.classes)


FramePolicy = Literal["middle", "first", "all", "nonzero"] | int


class DataConfig(Strict):
    # a CSV (image, label, patient_id[, split][, frame]) or a folder of class folders (see pipeline/folders.py)
    manifest: str
    # folder that relative image paths start from; default: the manifest's folder
    root: str | None = None
    # name of a built-in demo dataset to generate when the manifest is missing
    demo: Literal["chest_xray", "ultrasound"] | None = None
    on_error: Literal["raise", "skip"] = "raise"
    label_column: str = "label"
    patient_column: str = "patient_id"
    # where no patient id is given: a regex on the image path whose group 'patient' (or first group) is the id,
    # e.g. 'person(\d+)_' for file names like person12_bacteria_3.jpeg
    patient_regex: str | None = None
    exclude: list[str] = Field(default_factory=list)  # glob patterns of files to leave out, e.g. "*_mask*"
    # multi-frame DICOM / NIfTI: which frames or slices become samples ('all' and 'nonzero' expand rows)
    frames: FramePolicy = "middle"
    slice_axis: int = -1
    voi: Literal["auto", "window", "none"] = "auto"
    voi_index: int = Field(0, ge=0)
    crop_us_region: bool = True
    image_size: int = Field(224, ge=16, le=4096)
    # 'percentile' clips to the 0.5-99.5 percentiles before scaling to [0, 1] (robust to burned-in text)
    intensity: Literal["minmax", "percentile"] = "minmax"
    cache: Literal["memory", "none"] = "memory"
    num_workers: int = Field(0, ge=0)

    @field_validator("patient_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return v


class AugmentConfig(Strict):
    enabled: bool = True
    flip: float = Field(0.0, ge=0, le=1)  # horizontal flip: off for chest X-ray, where laterality matters
    rotate_deg: float = Field(10.0, ge=0, le=180)
    scale: float = Field(0.1, ge=0, lt=1)
    translate: float = Field(0.05, ge=0, lt=1)
    gamma: float = Field(0.3, ge=0, lt=1)  # contrast: gamma drawn from [1-g, 1+g]
    noise_std: float = Field(0.0, ge=0)


class CVConfig(Strict):
    folds: int = Field(5, ge=2)
    seed: int = 42
    # used only when the manifest has no `split` column: fraction of patients held out as test
    test_fraction: float = Field(0.0, ge=0, lt=1)


class ModelConfig(Strict):
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = "bundled"  # bundled | timm | none | path to a checkpoint file
    # auto: sum where the weights normalise every channel alike (exact), else fold (exact off the border)
    stem: Literal["auto", "sum", "fold", "repeat", "mean", "random"] = "auto"
    in_chans: int = Field(1, ge=1)
    drop_rate: float = Field(0.2, ge=0, lt=1)


class StageConfig(Strict):
    name: str
    train: str = "all"  # head | all | last:N (last N block groups + head)
    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    optimizer: str = "adamw"  # any timm optimizer name
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)
    patience: int | None = Field(None, ge=1)  # early stop after this many epochs without improvement
    # keep every BatchNorm's running statistics fixed (frozen layers always keep theirs): with small batches
    # of gray images, re-estimating ImageNet statistics can undo what the head stage learned
    freeze_bn: bool = False

    @field_validator("train")
    @classmethod
    def _train(cls, v: str) -> str:
        if v in ("head", "all"):
            return v
        if v.startswith("last:") and v[5:].isdigit() and int(v[5:]) > 0:
            return v
        raise ValueError("must be 'head', 'all' or 'last:N' with N > 0")


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="head", train="head", epochs=3, lr=3e-3, scheduler="constant"),
        StageConfig(name="full", train="all", epochs=5, lr=3e-4, scheduler="cosine", warmup_epochs=1),
    ]


class TrainConfig(Strict):
    batch_size: int = Field(32, ge=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    seed: int = 42
    monitor: Literal["auroc", "auprc", "loss", "balanced_accuracy"] = "auroc"
    class_weights: Literal["none", "balanced"] = "none"
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)
    log_every: int = Field(10, ge=1)
    progress: bool = True


class ReportConfig(Strict):
    bootstrap: int = Field(1000, ge=0)
    # operating point for sensitivity/specificity: a number, or 'youden' chosen on out-of-fold predictions
    threshold: float | Literal["youden"] = 0.5
    calibration_bins: int = Field(10, ge=2)


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None  # default: <task.name>-<timestamp>


class Config(Strict):
    task: TaskConfig
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    # where the YAML came from: relative data paths resolve against the working directory first,
    # then against the checkout root when running from one (PROJECT_ROOT)
    source: str | None = None

    @model_validator(mode="after")
    def _one_channel_data(self):
        # the model factory converts stems for several channels, but the data path reads one gray channel
        if self.model.in_chans != 1:
            raise ValueError("model.in_chans: training reads one gray channel per image; set in_chans: 1 "
                             "(several channels are available to the model factory, not yet to the data path)")
        return self


def resolve_config_path(name: str) -> Path:
    """`chest_xray`, `chest_xray.yaml` or a path; bare names resolve in configs/."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(c.stem for c in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"--config {name}: no such file (built-in configs: {known})")


def _parse_scalar(text: str):
    """`--set` values are YAML scalars/lists: 3 -> int, 1e-3 -> float, [a, b] -> list, null -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. train.batch_size=16")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:i])}' is not a section")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = _parse_scalar(value)
    elif isinstance(node, dict):
        node[last] = _parse_scalar(value)
    else:
        raise ConfigError(f"--set {key}: cannot set a value here")


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    if e["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = resolve_config_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for assignment in overrides:
        apply_override(raw, assignment)
    raw.setdefault("source", str(path.resolve()))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {_format_error(err)}") from None


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
