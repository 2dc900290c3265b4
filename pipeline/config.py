"""Run configuration: a pydantic schema, YAML loading, `--set` overrides and saving.

Unknown keys and wrong types are errors that name the key (a typo such as `lerning_rate` must not be
silently ignored and leave a default in force).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .vocab import MONITORS, STEM_STRATEGIES, parse_train_spec

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

    # every setting that changes the decoded pixels, before augmentation: checkpoints record them so inference
    # reads files exactly as training did
    PIXEL_SETTINGS: ClassVar[tuple[str, ...]] = ("frames", "slice_axis", "voi", "voi_index", "crop_us_region", "image_size", "intensity")

    def pixel_settings(self) -> dict:
        return self.model_dump(mode="json", include=set(self.PIXEL_SETTINGS))

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


class TrackingConfig(Strict):
    # false: no patient pixels in TensorBoard or the report (plots of metrics stay) for data that must not leave
    log_images: bool = True


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


MAX_ERRORS = 10  # errors listed in one message; the rest are counted


def _models_in(ann) -> list[type[BaseModel]]:
    """The pydantic models an annotation allows (X, X | None, X | Y)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in get_args(ann) if get_origin(ann) is not list for m in _models_in(a)]


def _lists_in(ann) -> list:
    """The item annotations of the lists an annotation allows (list[X], list[X] | None)."""
    if get_origin(ann) is list:
        return [get_args(ann)[0] if get_args(ann) else object]
    return [item for a in get_args(ann) for item in _lists_in(a)]


def _field(ann, key: str):
    """The pydantic FieldInfo of `key` in the model(s) that `ann` allows, or None."""
    return next((m.model_fields[key] for m in _models_in(ann) if key in m.model_fields), None)


def _step(ann, part):
    """The annotation one key (str) or list index (int) below `ann`; None where the schema has no such place."""
    if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
        items = _lists_in(ann)
        return items[0] if items else None
    field = _field(ann, part)
    return field.annotation if field is not None else None


def _schema_at(parts) -> object | None:
    ann = Config
    for part in parts:
        ann = _step(ann, part)
        if ann is None:
            return None
    return ann


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean a.b?)' for an unknown key at `loc`, else the section's valid keys."""
    *parent, key = loc
    fields = sorted({f for m in _models_in(_schema_at(parent)) for f in m.model_fields} - {"source"})
    if not fields:
        return ""
    close = difflib.get_close_matches(str(key), fields, n=3, cutoff=0.6)
    prefix = "".join(f"{p}." for p in parent)
    if close:
        return f" (did you mean {' or '.join(prefix + c for c in close)}?)"
    return f" (valid keys{' in ' + '.'.join(map(str, parent)) if parent else ''}: {', '.join(fields)})"


def _split_loc(loc: tuple) -> tuple[tuple, tuple]:
    """(key path, union tags): pydantic appends the member type it tried (`int`, `literal[...]`) to the loc of a
    value that fits no member of a union; those are not keys."""
    ann = Config
    for i, part in enumerate(loc):
        ann = _step(ann, part)
        if ann is None:
            return tuple(loc[:i]), tuple(loc[i:])
    return tuple(loc), ()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Problem:
    """One error: its config location (key parts as strings) and message, before attribution to file/override."""

    def __init__(self, loc: tuple, msg: str, unknown: bool = False):
        self.loc = tuple(str(p) for p in loc)
        self.msg = msg
        self.unknown = unknown  # an unknown key

    @property
    def key(self) -> str:
        return ".".join(self.loc)


def _problems(err: ValidationError) -> list[_Problem]:
    out: list[_Problem] = []
    unions: dict[tuple, tuple[_Problem, list[str], str]] = {}  # path -> (problem, alternatives, got)
    for e in err.errors():
        msg = " ".join(e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ").split())
        if e["type"] == "extra_forbidden":
            out.append(_Problem(e["loc"], f"unknown key{_did_you_mean(e['loc'])}", unknown=True))
            continue
        if e["type"] == "missing":
            out.append(_Problem(e["loc"], "required key is missing"))
            continue
        got = ""
        if e["type"] not in ("value_error", "assertion_error") and isinstance(e.get("input"), (str, int, float)):
            got = f" (got {_short(e['input'])})"
        path, tags = _split_loc(e["loc"])
        if not tags:
            out.append(_Problem(path, msg + got))
            continue
        # a value that fits no member of a union: pydantic reports each member; list them as one error
        if path not in unions:
            unions[path] = (_Problem(path, ""), [], got)
            out.append(unions[path][0])
        unions[path][1].append(msg)
    for problem, alternatives, got in unions.values():
        problem.msg = " / ".join(dict.fromkeys(alternatives)) + got
    return out


def _format_error(err: ValidationError) -> str:
    """All errors of a validation, '; '-separated on one line (kept for callers that format a ValidationError)."""
    return _join([f"{p.key}: {p.msg}" if p.key else p.msg for p in _problems(err)])


def _join(parts: list[str]) -> str:
    more = f" (and {len(parts) - MAX_ERRORS} more)" if len(parts) > MAX_ERRORS else ""
    return "; ".join(parts[:MAX_ERRORS]) + more


def _default_value(parts: list[str]):
    """The schema default at a dotted location, as plain data (None where there is none)."""
    *parent, key = parts
    field = _field(_schema_at(parent), key)
    if field is None or field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"'{part}' is not a list index ({where} is a list of {len(node)} items; "
                          f"use {where}.0{f' .. {where}.{len(node) - 1}' if len(node) > 1 else ''})")
    if int(part) >= len(node):
        raise ConfigError(f"index {part} is out of range ({where} has {len(node)} item{'s' * (len(node) != 1)})")
    return int(part)


def apply_override(raw: dict, assignment: str) -> list[str]:
    """Set one `KEY=VALUE` in the raw YAML data; return the key's parts. List items are addressed by index
    (train.stages.0.lr); a list the YAML leaves at its default is filled in from the schema first."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. train.batch_size=16")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: '{key.strip()}' is not a dotted key such as train.batch_size")
    try:
        node = raw
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[:i + 1])
            if isinstance(node, list):
                node = node[_index(node, part, ".".join(parts[:i]))]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    default = _default_value(parts[:i + 1])
                    node[part] = default if isinstance(default, (list, dict)) else {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{where} is a value ({_short(node)}), not a section or list; "
                                  f"set it with --set {where}=VALUE")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, ".".join(parts[:-1]))] = _parse_scalar(value)
        else:
            node[last] = _parse_scalar(value)
    except ConfigError as exc:
        raise ConfigError(f"--set {assignment}: {exc}") from None
    return parts


def _attribute(problem: _Problem, overrides: list[tuple[tuple, str, int]]) -> tuple[int, str] | None:
    """(override's position, the error as caused by that override), or None. An override causes an error at or below its key (the most
    specific override wins, the last on ties), and one above it that is an unknown section it created or a
    section validator's message naming the key."""
    best = None
    for override in overrides:
        key = override[0]
        if problem.loc[:len(key)] == key and (best is None or len(key) >= len(best[0])):
            best = override
    if best is not None:
        key, assignment, pos = best
        where = f"{problem.key}: " if problem.loc != key else ""
        return pos, f"--set {assignment}: {where}{problem.msg}"
    for key, assignment, pos in reversed(overrides):
        if key[:len(problem.loc)] == problem.loc and len(key) > len(problem.loc):
            named = ".".join(key[len(problem.loc):]) + ": "
            if problem.msg.startswith(named):
                return pos, f"--set {assignment}: {problem.msg.removeprefix(named)}"
            if problem.unknown:
                return pos, f"--set {assignment}: {problem.key}: {problem.msg}"
    return None


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
    set_keys: list[tuple[tuple, str, int]] = []  # (key parts, assignment, position on the command line)
    override_errors: list[tuple[int, str]] = []
    for pos, assignment in enumerate(overrides):
        try:
            set_keys.append((tuple(apply_override(raw, assignment)), assignment.strip(), pos))
        except ConfigError as exc:
            override_errors.append((pos, str(exc)))
    raw.setdefault("source", str(path.resolve()))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        from_file, from_overrides = [], []
        for problem in _problems(err):
            line = _attribute(problem, set_keys)
            if line is not None:
                from_overrides.append(line)
            else:
                from_file.append(f"{problem.key}: {problem.msg}" if problem.key else problem.msg)
        file_part = [f"{path}: {from_file[0]}", *from_file[1:]] if from_file else []
        # errors of overrides in command-line order (stable: one override's errors keep the schema's order)
        by_override = [line for _, line in sorted(override_errors + from_overrides, key=lambda t: t[0])]
        raise ConfigError(_join(by_override + file_part)) from None
    if override_errors:
        raise ConfigError(_join([line for _, line in override_errors]))
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# what `--resume RUN --set ...` may change: how the run is shown, reported and where it runs, never what
# trained the finished folds (a prefix covers its whole section); everything else is refused
RESUME_MAY_CHANGE = ("train.progress", "train.log_every", "train.device", "data.num_workers", "report.",
                     "tracking.", "output.", "source")


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return {k: v for i, val in enumerate(node) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: node}


def resume_changes(saved: Config, new: Config) -> list[str]:
    """Keys whose value differs between a run's saved config and the one --resume would use, leaving out
    RESUME_MAY_CHANGE."""
    a, b = _flat(saved.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_MAY_CHANGE)]
