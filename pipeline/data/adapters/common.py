"""What every dataset adapter returns, and the rules they share (label files, file matching, uncertain labels,
finding-vs-No-Finding, radiologist votes, DICOM header fields).

An adapter turns one public data set, in its published layout, into `Collected`: the manifest rows it could
build and every file it left out with the reason. `pipeline.data.adapters.writer` writes both.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DataError

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
VIEWS = ("frontal", "lateral", "all")
VOTES = ("majority", "any")


@dataclass(frozen=True)
class Options:
    """The `graystem prepare` options an adapter may read (each adapter reads only its own)."""

    finding: str | None = None  # binary task: this finding vs the set's "No Finding"
    uncertain: str = "ignore"  # CheXpert / MIMIC -1: ones | zeros | ignore (unknown)
    view: str = "frontal"  # frontal | lateral | all
    rad_vote: str = "majority"  # VinDr-CXR: majority | any of the radiologists
    patient_regex: str | None = None  # image-folder / csv: patient id from the file name
    image_col: str = "image"
    label_col: str = "label"
    patient_col: str | None = None
    fold_col: str | None = None
    split_col: str | None = None
    meta_cols: tuple[str, ...] = ()
    folds: int = 5  # BUS-BRA: the published 5- or 10-fold partition
    out: Path | None = None  # the output folder, for adapters that write images (MedMNIST)


@dataclass(frozen=True)
class Row:
    """One manifest row. `image` is absolute, or relative to the output folder for files the adapter wrote."""

    image: str
    label: str = ""  # single-label sets
    findings: Mapping[str, float | None] = field(default_factory=dict)  # multi-label: 1/0, None = unknown
    patient_id: str = ""  # blank: no id known (training groups exact copies, else image = patient)
    split: str = "train"  # train (the cross-validation pool) | test
    fold: int | None = None  # the set's published fold, 0-based
    meta: Mapping[str, str] = field(default_factory=dict)  # view_position, patient_sex, patient_age, device ...


@dataclass(frozen=True)
class LeftOut:
    image: str
    reason: str


@dataclass(frozen=True)
class Collected:
    rows: tuple[Row, ...]
    left_out: tuple[LeftOut, ...] = ()
    findings: tuple[str, ...] = ()  # multi-label: the finding columns in order; () = one `label` column
    notes: tuple[str, ...] = ()  # what the summary must say (no patient ids, copies grouped, ...)
    positive: str | None = None  # binary: the class to score (the chosen finding); None: the last class


def read_table(path: Path) -> list[dict]:
    """A CSV label file (plain or .gz, as MIMIC ships them) as records; DataError names a missing file."""
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def require_columns(records: list[dict], columns: Iterable[str], path: Path) -> None:
    have = set(records[0]) if records else set()
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {sorted(have)}")


def find_one(source: Path, pattern: str, what: str) -> Path:
    """The one file matching a glob below source (shallowest first): label files sit at the top or one down."""
    hits = sorted(source.rglob(pattern), key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise DataError(f"{source}: no {what} ({pattern}) found")
    return hits[0]


def walk_files(source: Path, suffixes: Iterable[str]) -> list[Path]:
    """Every file below source with one of the suffixes (any case), in a stable order; hidden entries skipped."""
    wanted = {s.lower() for s in suffixes}
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in sorted(filenames)
                  if Path(n).suffix.lower() in wanted and not n.startswith(".")]
    return found


def index_files(source: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """walk_files by file name. Public sets name images uniquely (NIH, RSNA, VinDr) but spread them over
    sub-folders (images_001/images/ ...), so the name is the key."""
    found: dict[str, Path] = {}
    for p in walk_files(source, suffixes):
        found.setdefault(p.name, p)
    return found


def unlabelled(found: Mapping[str, Path], named: set[str], label_file: str) -> list[LeftOut]:
    """Images on disk that no row of the label file covers."""
    return [LeftOut(str(p), f"no row in {label_file}") for n, p in sorted(found.items()) if n not in named]


def missing(name: str, label_file: str) -> LeftOut:
    return LeftOut(name, f"named in {label_file} but the file is missing")


def uncertain_value(text: str, policy: str) -> float | None:
    """A CheXpert-style label cell -> 1, 0 or None (unknown). -1 is 'uncertain' in the report labeller's
    output; `policy` maps it (U-Ones / U-Zeros / U-Ignore of Irvin et al. 2019). Blank: not mentioned."""
    t = (text or "").strip()
    if t in ("", "nan"):
        return None
    v = float(t)
    if v == -1:
        return {"ones": 1.0, "zeros": 0.0, "ignore": None}[policy]
    if v not in (0, 1):
        raise DataError(f"label value {t!r} is not 1, 0, -1 or blank")
    return v


def healthy_negatives(findings: dict[str, float | None], no_finding: str, keep=("Support Devices",)) -> dict:
    """A 'No Finding' image is negative for every finding the labeller left blank, as torchxrayvision's CheXpert
    and MIMIC datasets do; blanks elsewhere stay unknown. Support devices are not a finding."""
    if findings.get(no_finding) != 1.0:
        return findings
    return {k: (0.0 if v is None and k not in keep else v) for k, v in findings.items()}


def binary_label(findings: Mapping[str, float | None], finding: str, no_finding: str) -> tuple[str, str]:
    """(label, '') for the task `finding` vs `no_finding`, or ('', reason) when the image is neither: an image
    with other findings only is no negative for this task, and an unknown finding is not a negative."""
    if findings.get(finding) == 1.0:
        return finding, ""
    if findings.get(no_finding) == 1.0:
        return no_finding, ""
    if findings.get(finding) is None and finding in findings:
        return "", f"{finding} uncertain or unknown"
    return "", f"neither {finding} nor {no_finding}"


def check_finding(finding: str | None, names: Iterable[str], where: str) -> None:
    names = list(names)
    if finding is not None and finding not in names:
        raise DataError(f"--finding {finding!r}: not a finding of {where}; choose from {names}")


def label_mode(findings: dict[str, float | None], opts: Options, no_finding: str,
               image: str) -> tuple[dict, str, LeftOut | None]:
    """(findings for a multi-label row, label for a binary one, or the LeftOut) under --finding."""
    if opts.finding is None:
        return findings, "", None
    label, why = binary_label(findings, opts.finding, no_finding)
    return {}, label, (LeftOut(image, why) if why else None)


def view_kind(text: str) -> str:
    """frontal | lateral | other, from CheXpert's Frontal/Lateral or a DICOM-like ViewPosition."""
    t = (text or "").strip().upper()
    if t in ("FRONTAL", "PA", "AP", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD"):
        return "frontal"
    if t in ("LATERAL", "LL", "RL", "LAO", "RAO", "LPO", "RPO") or t.startswith("LAT"):
        return "lateral"
    return "other"


def view_left_out(kind: str, opts: Options, image: str) -> LeftOut | None:
    if opts.view == "all" or kind == opts.view:
        return None
    return LeftOut(image, f"{kind} view (--view {opts.view})")


def vote(values: list[float], how: str) -> float:
    """Several radiologists' 0/1 for one finding: 'any' = one of them, 'majority' = more than half."""
    if how == "any":
        return float(any(v == 1 for v in values))
    return float(sum(v == 1 for v in values) * 2 > len(values))


def dicom_fields(path: Path, keywords: Iterable[str]) -> dict[str, str]:
    """Header fields of one DICOM file as text ('' when absent or unreadable: the training run reads the
    pixels and reports an unreadable file itself)."""
    import pydicom

    keywords = list(keywords)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=keywords)
    except Exception:  # not DICOM: reported by the reader at training time, with its reason
        return {k: "" for k in keywords}
    return {k: str(ds.get(k, "") or "").strip() for k in keywords}
