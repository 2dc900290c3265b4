"""Manifest CSV (or a folder of class folders) -> immutable samples.

A `Sample` is one (file, frame) with its target, label, patient and the manifest's split request. Frame policies
'all' / 'nonzero' expand one file into one sample per frame or slice; every such sample keeps the patient id, so
all frames of a patient land in the same fold. The manifest never changes after loading: decoding returns the
samples it kept, and fold / test membership belongs to the splits (pipeline.data.cv).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import privacy
from pipeline.data.folders import folder_records
from pipeline.errors import DataError, ImageReadError
from pipeline.io import expanded_frames
from pipeline.schema import Config, DataConfig, resolve_data_path
from pipeline.vocab import DICOM_SUFFIXES


@dataclass(frozen=True)
class Sample:
    image: str  # absolute path
    image_text: str  # as written in the manifest (what outputs show)
    target: int | tuple[float, ...]  # class index (binary: 1 = positive class), or a 0/1/NaN vector
    label: str  # as written (multi-label: the positive classes joined by ';')
    patient_id: str  # the grouping key of the folds; the image itself when no id is known
    patient_known: bool  # False: no id anywhere, the image counts as its own patient
    split: str | None  # 'train' | 'test' as the manifest asks, None when it has no split column
    frame: int | None  # None: the reader's frame policy picks
    row: int  # manifest line, for messages
    fold: int | None = None  # the manifest's published CV fold (`fold` column); None: blank or no such column
    # the manifest's other columns (view, sex, site, ...), (name, value) in column order: they reach the prediction
    # files so results can be broken down by them, and the audit tests them as shortcuts
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, int | None]:
        """What identifies a decoded image: the file and the frame."""
        return self.image, self.frame


@dataclass(frozen=True)
class Skipped:
    image: str
    row: int | None
    reason: str

    def as_dict(self) -> dict:
        return {"image": self.image, "row": self.row, "reason": self.reason}


@dataclass(frozen=True)
class Manifest:
    samples: tuple[Sample, ...]
    skipped: tuple[Skipped, ...] = ()
    path: Path | None = None
    # column | regex | dicom; 'image' or 'mixed' when some images had no id and count as their own patient
    patient_source: str = "column"


def _dicom_patient_id(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["PatientID"])
    except Exception:  # not DICOM or unreadable header: the pixel reader reports it properly later
        return None
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid or None


def _parse_target(record: dict, cfg: Config, where: str):
    """Returns (target, label text) or raises DataError naming the row and value."""
    task = cfg.task
    if task.type == "multilabel":
        missing = [c for c in task.classes if c not in record]
        if missing and cfg.data.label_column in record:
            # one column of names, as NIH ChestX-ray14 ships it: "Effusion|Infiltration", "No Finding";
            # findings outside task.classes are not ours to predict and leave the row's classes negative
            names = {n.strip() for n in re.split(r"[|;]", record[cfg.data.label_column] or "") if n.strip()}
            vec = [1.0 if c in names else 0.0 for c in task.classes]
            return vec, ";".join(c for c in task.classes if c in names)
        if missing:
            raise DataError(f"{where}: multi-label manifest needs one 0/1 column per class (or a "
                            f"'{cfg.data.label_column}' column of names separated by |); missing {missing}")
        vec = []
        for c in task.classes:
            v = (record[c] or "").strip()
            if v in ("", "-1", "-1.0"):
                # unknown, or uncertain as CheXpert writes it (-1): masked out of the loss and the metrics
                vec.append(math.nan)
            elif v in ("0", "1", "0.0", "1.0"):
                vec.append(float(v))
            else:
                raise DataError(f"{where}: column '{c}' must be 0, 1, -1 (uncertain) or blank, got '{v}'")
        return vec, ";".join(c for c, x in zip(task.classes, vec, strict=True) if x == 1.0)
    label = (record.get(cfg.data.label_column) or "").strip()
    if not label:
        raise DataError(f"{where}: no label (column '{cfg.data.label_column}', or a class folder above the file)")
    if label not in task.classes:
        raise DataError(f"{where}: label '{label}' is not one of task.classes {task.classes}")
    if task.type == "binary":
        return int(label == task.positive), label  # 1 = the positive class, whichever position it has
    return task.classes.index(label), label


def expand_frames(path: Path, explicit: str, data: DataConfig) -> list[int | None]:
    """The frames of one file that become samples under data.frames (an explicit manifest frame wins)."""
    if explicit:
        try:
            return [int(explicit)]
        except ValueError:
            raise DataError(f"frame '{explicit}' is not an integer") from None
    policy = data.frames
    if isinstance(policy, int):
        return [policy]
    if policy in ("all", "nonzero"):
        return expanded_frames(path, policy, data.reader_options())
    return [None]  # middle / first: the reader picks


def patient_from_path(regex: re.Pattern | None, image_text: str) -> str:
    m = regex.search(image_text) if regex else None
    if not m:
        return ""
    if "patient" in regex.groupindex:
        return m.group("patient") or ""
    # the first group that matched: alternatives such as (?:person(\d+)_|IM-(\d+)-) each have their own
    return next((g for g in m.groups() if g), m.group(0))


def _dialect(header: str) -> type[csv.Dialect] | str:
    """Comma-separated unless the header line is plainly separated by ';' or tab (European Excel exports)."""
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t")
    except csv.Error:  # one column, or nothing to tell: the standard
        return "excel"


def _read_records(path: Path, cfg: Config) -> tuple[Path, list[str], list[dict]]:
    """(root for relative paths, columns, records) of a CSV manifest or a folder of class folders."""
    if path.is_dir():
        if cfg.task.type == "multilabel":
            raise DataError(f"data.manifest: {path} is a folder; multi-label tasks need a CSV with one column per class")
        records = folder_records(path, cfg.task.classes, cfg.data.exclude, cfg.data.label_column)
        return path, ["image", cfg.data.label_column, "split"], records
    if not path.is_file():
        raise DataError(f"data.manifest: file not found: {path}")
    root = resolve_data_path(cfg.data.root) if cfg.data.root else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM (Excel's "CSV UTF-8") is not part of 'image'
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the CSV as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the manifest is empty (not even a header line)")
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=_dialect(text.splitlines()[0]))
    columns = reader.fieldnames or []
    records = list(reader)
    if cfg.data.exclude:
        records = [r for r in records if not any(fnmatch.fnmatch(r.get("image") or "", p) or
                                                 fnmatch.fnmatch(Path(r.get("image") or "").name, p)
                                                 for p in cfg.data.exclude)]
    return root, columns, records


def extra_columns_of(cfg: Config, columns) -> list[str]:
    """The manifest columns beyond image, label, patient id, split, fold, frame/slice and the class columns."""
    known = {"image", cfg.data.label_column, cfg.data.patient_column, "split", "fold", "frame", "slice",
             *(cfg.task.classes if cfg.task.type == "multilabel" else ())}
    return [c for c in columns if c and c not in known]


def load_manifest(cfg: Config) -> Manifest:
    path = resolve_data_path(cfg.data.manifest)
    root, columns, records = _read_records(path, cfg)
    regex = re.compile(cfg.data.patient_regex) if cfg.data.patient_regex else None
    if "image" not in columns:
        raise DataError(f"{path}: the manifest needs an 'image' column (found: {', '.join(columns)})")
    if cfg.task.type != "multilabel" and cfg.data.label_column not in columns:
        raise DataError(f"{path}: no label column '{cfg.data.label_column}' (data.label_column); found: {', '.join(columns)}")
    if not records:
        raise DataError(f"{path}: the manifest has no rows")

    has_pid = cfg.data.patient_column in columns
    has_split = "split" in columns
    has_fold = "fold" in columns
    extra_columns = extra_columns_of(cfg, columns)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    unknown_patients = 0
    for line, rec in enumerate(records, start=2):  # line 1 is the header
        where = f"{path.name} row {line}"
        image_text = (rec.get("image") or "").strip()
        image = Path(image_text).expanduser()
        image = image if image.is_absolute() else (root / image)
        try:
            if not image_text:
                raise DataError(f"{where}: empty 'image'")
            target, label = _parse_target(rec, cfg, where)
            if not image.exists():
                raise DataError(f"{where}: image not found: {image}")
            split = (rec.get("split") or "train").strip().lower() if has_split else None
            if split not in ("train", "test", None):
                raise DataError(f"{where}: split must be 'train' or 'test', got '{split}'")
            fold_text = (rec.get("fold") or "").strip() if has_fold else ""
            try:
                fold = int(float(fold_text)) if fold_text else None  # 3 or 3.0 (a spreadsheet's export)
            except (ValueError, OverflowError):
                raise DataError(f"{where}: fold must be an integer or blank, got '{fold_text}'") from None
            if fold is not None and (fold < 0 or fold != float(fold_text)):
                raise DataError(f"{where}: fold must be a non-negative integer or blank, got '{fold_text}'")
            pid = (rec.get(cfg.data.patient_column) or "").strip() if has_pid else ""
            if not pid:
                pid = patient_from_path(regex, image_text)
            if not pid and image.suffix.lower() in DICOM_SUFFIXES:
                pid = _dicom_patient_id(image) or ""
            try:
                frames = expand_frames(image, (rec.get("frame") or rec.get("slice") or "").strip(), cfg.data)
            except ImageReadError as exc:
                raise DataError(f"{where}: {exc.reason} ({image})") from None
        except DataError as exc:
            if cfg.data.on_error == "skip":
                skipped.append(Skipped(str(image), line, str(exc)))
                continue
            raise
        unknown_patients += not pid
        for frame in frames:
            # without any id the image is its own patient (the run and the audit warn about it)
            samples.append(Sample(image=str(image), image_text=image_text,
                                  target=tuple(target) if isinstance(target, list) else target, label=label,
                                  patient_id=pid or image_text, patient_known=bool(pid), split=split,
                                  frame=frame, row=line, fold=fold,
                                  extra=tuple((c, (rec.get(c) or "").strip()) for c in extra_columns)))
    if not samples:
        raise DataError(f"{path}: no usable rows ({len(skipped)} skipped; see skipped.csv)")
    source = "column" if has_pid else "regex" if regex else "dicom"
    if unknown_patients:
        source = "mixed" if source == "column" else "image"
    manifest = Manifest(samples=tuple(samples), skipped=tuple(skipped), path=path, patient_source=source)
    return privacy.apply(cfg, manifest)  # from here on, outputs only ever see pseudonyms and row numbers
