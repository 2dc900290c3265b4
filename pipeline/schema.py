"""The run configuration's schema: one pydantic model per YAML section, validated strictly.

Unknown keys and wrong types are errors that name the key (a typo such as `lerning_rate` must not be silently
ignored and leave a default in force); `pipeline.config` loads YAML and `--set` overrides into it and words
the errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.vocab import MONITORS, STEM_STRATEGIES, parse_train_spec

# a source checkout (pyproject.toml beside the package) is a second base for relative data paths, so
# `--config configs/x.yaml` finds data/ from any working directory; an installed package has none
_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT: Path | None = _ROOT if (_ROOT / "pyproject.toml").is_file() else None


def resolve_data_path(text: str) -> Path:
    """Relative paths are tried against the working directory, then the checkout root (when there is one)."""
    p = Path(text).expanduser()
    if p.is_absolute() or p.exists() or PROJECT_ROOT is None:
        return p.resolve()
    alt = PROJECT_ROOT / p
    return alt.resolve() if alt.exists() else p.resolve()


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
    # decoded images: memory (N x S^2 x 2 bytes of RAM), disk (a cache folder shared by runs, read per sample),
    # none (every sample read from its file again); see pipeline/cache.py
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None  # default $XDG_CACHE_HOME/graystem or ~/.cache/graystem
    cache_key: Literal["stat", "content"] = "stat"  # file identity: path+size+mtime, or sha256 of the bytes
    # loader processes; auto: min(4, train.threads - 1) where samples read files, 0 for the memory cache on CPU
    num_workers: int | Literal["auto"] = "auto"
    # images whose short side (after any ultrasound crop) is below this are refused: a 1x1 or 5x4000 file is
    # not an image to learn from (pipeline/checks.py)
    min_size: int = Field(32, ge=1)
    # duplicate rows and patients with conflicting labels: a warning line, or an error
    duplicates: Literal["warn", "error"] = "warn"
    # near copies (re-crops, rescales, JPEG, burned-in text) found by perceptual hashes of the decoded pixels:
    # group = copies without known patient ids join one CV group, two known patients stop the run; warn = a
    # warning only; error = stop; off = no check (pipeline/data/near_check.py, docs/data_checks.md)
    near_duplicates: Literal["group", "warn", "error", "off"] = "group"
    # both 256-bit hashes (pHash and dHash) within this many bits: near copies (measured: docs/data_checks.md)
    near_duplicate_bits: int = Field(48, ge=0, le=128)

    # every setting that changes the decoded pixels, before augmentation: checkpoints record them so inference
    # reads files exactly as training did
    PIXEL_SETTINGS: ClassVar[tuple[str, ...]] = ("frames", "slice_axis", "voi", "voi_index", "crop_us_region", "image_size", "intensity")

    def pixel_settings(self) -> dict:
        return self.model_dump(mode="json", include=set(self.PIXEL_SETTINGS))

    def reader_options(self):
        """How the readers open one file for these settings (the one rule; `frames: all | nonzero` expand into
        samples in the manifest, and each sample then reads one frame, so the reader's default is the middle)."""
        from pipeline.io import ReaderOptions

        frame = self.frames if self.frames in ("middle", "first") or isinstance(self.frames, int) else "middle"
        return ReaderOptions(voi=self.voi, voi_index=self.voi_index, frame=frame,
                             crop_us_region=self.crop_us_region, slice_axis=self.slice_axis)

    @field_validator("near_duplicates", mode="before")
    @classmethod
    def _off(cls, v):
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be 'auto' or a number >= 0")
        return v

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
    stem: Literal[("auto", *STEM_STRATEGIES)] = "auto"
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
    # head stages only: compute the frozen backbone's pooled features once per fold (eval mode, no augmentation)
    # and train the head on them. Much faster per epoch (no backbone forward, no image pipeline); the trade-off:
    # this stage sees no augmentation
    cache_features: bool = False

    @field_validator("train")
    @classmethod
    def _train(cls, v: str) -> str:
        parse_train_spec(v)
        return v

    @model_validator(mode="after")
    def _cache_features(self):
        if self.cache_features and self.train != "head":
            raise ValueError(f"cache_features: only for a stage with train: head (this one trains '{self.train}', "
                             "so the backbone's features change every step)")
        return self


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="head", train="head", epochs=3, lr=3e-3, scheduler="constant"),
        StageConfig(name="full", train="all", epochs=5, lr=3e-4, scheduler="cosine", warmup_epochs=1),
    ]


class EmaConfig(Strict):
    # weight EMA (timm's ModelEmaV3) over the optimiser steps of each stage that trains on images; validation and
    # the best checkpoint use the averaged weights. Per-stage steps are few on small sets (BUSI: 13 per epoch),
    # so the decay is far below ImageNet's 0.9998
    decay: float = Field(0.99, gt=0, lt=1)
    # timm's warm-up: decay grows as 1 - (1 + step)^-2/3 up to `decay`, so early steps are not dominated by
    # the weights the stage started from
    warmup: bool = True


class MixupConfig(Strict):
    # timm's Mixup (batch mode): each batch mixes with its reverse; targets mix with the same lambda
    mixup_alpha: float = Field(0.2, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    prob: float = Field(1.0, ge=0, le=1)  # chance that a batch is mixed at all
    switch_prob: float = Field(0.5, ge=0, le=1)  # with both alphas > 0: chance of CutMix instead of MixUp

    @model_validator(mode="after")
    def _some_alpha(self):
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("mixup: set mixup_alpha or cutmix_alpha above 0 (or drop train.mixup)")
        return self


class TrainConfig(Strict):
    batch_size: int = Field(32, ge=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: time a few training steps of fp32 and bf16 (and fp16 on CUDA), each with channels_last on and off,
    # at start-up, and keep the fastest with a finite loss (sets channels_last too; recorded in precision.json
    # and summary.json, and reused by --resume and by every --fold process of the run)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = True
    seed: int = 42
    # repeat the whole cross-validation with training seeds seed, seed+1, ... on the same folds (cv.seed):
    # seed-to-seed spread is the noise a comparison between two settings has to beat (--seeds N)
    repeats: int = Field(1, ge=1)
    monitor: Literal[MONITORS] = "auroc"
    class_weights: Literal["none", "balanced"] = "none"
    # EMA, label smoothing and MixUp are off by default: none of them helped in paired 3-seed comparisons on
    # NIH and BUSI (docs/plan.md, "Recipe parts"); EMA cost 12% more time, smoothing and MixUp lost about 0.01
    # out of fold on BUSI
    # targets pulled towards uniform by this much (binary: t(1-e) + e/2; multi-class: torch's label_smoothing)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    ema: EmaConfig | None = None  # weight EMA (timm's ModelEmaV3)
    mixup: MixupConfig | None = None  # MixUp / CutMix in stages that train on images; binary and multi-class
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)
    log_every: int = Field(10, ge=1)
    progress: bool = True
    # CPU threads for torch and processes for the first decode; default: the cores this process may use
    threads: int | None = Field(None, ge=1)


class ReportConfig(Strict):
    bootstrap: int = Field(1000, ge=0)
    # operating point for sensitivity/specificity: a number, or 'youden' chosen on out-of-fold predictions
    threshold: float | Literal["youden"] = 0.5
    calibration_bins: int = Field(10, ge=2)
    # extra operating points (binary), chosen on out-of-fold predictions and reported on the test set
    target_sensitivity: float | None = Field(0.95, gt=0, le=1)
    target_specificity: float | None = Field(0.95, gt=0, le=1)
    # Grad-CAM panel (RUN/cam_panel.png, in report.md) on the most confident test cases and errors; never drawn
    # when tracking.log_images is false
    cam_panel: bool = True
    # temperature: one logit temperature (per class for multi-label) fitted on the pooled out-of-fold logits and
    # applied to every probability of the finished run (test set, predict, evaluate, exports); none: raw outputs
    calibrate: Literal["temperature", "none"] = "temperature"
    # breakdowns of the metrics by manifest columns or DICOM attributes (view_position, patient_sex, age_band,
    # manufacturer, manufacturer_model_name, body_part_examined, modality, or any manifest column)
    subgroups: list[str] = Field(default_factory=list)
    # a subgroup with fewer images (or fewer than 5 of either class) gets "too small" instead of estimates
    subgroup_min_n: int = Field(20, ge=1)
    # split conformal prediction sets on the out-of-fold scores at this error rate (binary and multi-class)
    conformal_alpha: float = Field(0.1, gt=0, lt=1)


class TrackingConfig(Strict):
    # false: no patient pixels in TensorBoard or the report (plots of metrics stay) for data that must not leave
    log_images: bool = True


class InferenceConfig(Strict):
    # test-time augmentation of the fold ensemble: 'flip' averages the probabilities of the image and its
    # left-right mirror. Applied alike to the run's out-of-fold and test predictions, predict, evaluate and every
    # export (pipeline/model/tta.py). Only where training flipped too (augment.flip > 0): never for chest films
    tta: Literal["none", "flip"] = "none"


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None  # default: <task.name>-<timestamp>


class PrivacyConfig(Strict):
    # patient ids in every output (splits, predictions, reports, logs) become HMAC-SHA256(key, id)[:16]
    pseudonymize_ids: bool = False
    # image paths in outputs become row<N> (file names can carry names: "Patient Mueller.dcm")
    hide_file_names: bool = False
    # the secret key, kept beside the run folders, never in one; default <run folder>/../.graystem_key
    key_file: str | None = None


class Config(Strict):
    task: TaskConfig
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

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

    @model_validator(mode="after")
    def _recipe_parts(self):
        if self.inference.tta == "flip" and self.augment.flip == 0:
            raise ValueError("inference.tta: 'flip' needs augment.flip > 0 (a modality where mirror images are "
                             "plausible; never for chest films, where laterality matters)")
        if self.train.mixup is not None and self.task.type == "multilabel":
            raise ValueError("train.mixup: only for binary and multi-class tasks (timm's Mixup needs one label "
                             "per image)")
        return self
