"""A data set's fingerprint for planning (`graystem plan`): what the manifest and the image headers say.

Images, patients, classes and their balance from the manifest (folder manifests too); from up to
`max_files` files, read with the project's readers (pipeline.io.read_gray, so the ultrasound crop and the
DICOM tags are the training's own): format, modality, bit depth, frames per file and the image size after
the ultrasound crop. Modality comes from the DICOM Modality tag, else from words in the manifest's path
(ultrasound / chest X-ray); 'unknown' otherwise, which the planner treats like a chest film (no flips).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import re
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.data.folders import folder_records
from pipeline.errors import DataError, ImageReadError
from pipeline.io import ReaderOptions, count_frames, read_gray

# DICOM Modality values (PS3.3 C.7.3.1.1.1) of the two modalities the recipes know
US_MODALITIES = {"US", "IVUS"}
XRAY_MODALITIES = {"CR", "DX", "RG", "DR"}
_US_WORDS = re.compile(r"(^|[^a-z])(us|ultrasound|sono\w*|echo\w*|busi|b-?mode|breast)([^a-z]|$)")
_XRAY_WORDS = re.compile(r"(^|[^a-z])(cxr|x-?ray\w*|chest\w*|radiograph\w*|nih|pneumonia|mimic|chexpert)([^a-z]|$)")
NEGATIVE_NAMES = ("normal", "benign", "no_finding", "negative", "healthy", "control", "absent")


@dataclass(frozen=True)
class Fingerprint:
    manifest: str
    images: int  # manifest rows (files)
    samples: int  # after expanding every frame of multi-frame files (what frames: all trains on)
    patients: int  # distinct patient ids; = images when the manifest has none
    patient_ids: bool  # the manifest names patients
    classes: tuple[str, ...]
    class_counts: tuple[int, ...]  # images per class, classes order
    class_patients: tuple[int, ...]  # patients per class
    test_rows: int  # rows the manifest's split column holds out as test
    formats: dict  # {'dicom': n, 'png'...}
    modality: str  # ultrasound | xray | unknown
    modality_source: str  # 'DICOM Modality tag US' / 'the word "busi" in the path' / ...
    bits: int | None  # most common bit depth
    frames_median: float
    frames_max: int
    short_side_median: int  # after the ultrasound crop
    long_side_median: int
    read_per_s: float  # files read per second while fingerprinting (one process)
    files_read: int

    @property
    def imbalance(self) -> float:
        return max(self.class_counts) / max(min(self.class_counts), 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "imbalance": round(self.imbalance, 3)}


def _records(path: Path, label_column: str, exclude: list[str]) -> tuple[Path, list[dict]]:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir() if p.is_dir())
        return path, folder_records(path, names, exclude, label_column)
    if not path.is_file():
        raise DataError(f"manifest: file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows or "image" not in rows[0]:
        raise DataError(f"{path}: the manifest needs an 'image' column and at least one row")
    if label_column not in rows[0]:
        raise DataError(f"{path}: no label column '{label_column}'; found: {', '.join(rows[0])}")
    # data.exclude's rule (pipeline/data/manifest.py): a pattern matches the path as written or the file name
    rows = [r for r in rows if not any(fnmatch.fnmatch(r["image"], p) or fnmatch.fnmatch(Path(r["image"]).name, p)
                                       for p in exclude)]
    if not rows:
        raise DataError(f"{path}: every row is excluded by {exclude}")
    return path.parent, rows


def order_classes(names) -> tuple[str, ...]:
    """Binary: the negative-sounding class first (the positive, scored class last); else sorted."""
    names = sorted(names)
    if len(names) == 2 and names[1].lower() in NEGATIVE_NAMES and names[0].lower() not in NEGATIVE_NAMES:
        names.reverse()
    return tuple(names)


def _modality_from_words(text: str) -> tuple[str, str] | None:
    low = text.lower().replace("\\", "/")
    for name, rx in (("ultrasound", _US_WORDS), ("xray", _XRAY_WORDS)):
        m = rx.search(low)
        if m:
            return name, f'the word "{m.group(2)}" in the data path'
    return None


def fingerprint(manifest: str | Path, *, label_column: str = "label", patient_column: str = "patient_id",
                exclude: list[str] | None = None, max_files: int = 200) -> Fingerprint:
    path = Path(manifest).expanduser().resolve()
    root, rows = _records(path, label_column, list(exclude or []))
    labels = [(r.get(label_column) or "").strip() for r in rows]
    if any(not x for x in labels):
        raise DataError(f"{path}: row {labels.index('') + 2} has an empty '{label_column}'")
    classes = order_classes(set(labels))
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({classes[0]}); a classifier needs at least two")
    has_pid = any((r.get(patient_column) or "").strip() for r in rows)
    pids = [(r.get(patient_column) or "").strip() or r["image"] for r in rows]
    by_class = {c: {p for p, lab in zip(pids, labels, strict=True) if lab == c} for c in classes}
    counts = Counter(labels)
    files = [Path(r["image"]) if Path(r["image"]).is_absolute() else root / r["image"] for r in rows]
    step = max(1, len(files) // max_files)  # an even spread over the manifest, not its first rows
    picked = files[::step][:max_files]
    shorts, longs, bits, frames, formats, tags = [], [], Counter(), [], Counter(), Counter()
    opts = ReaderOptions(crop_us_region=True)
    start = time.perf_counter()
    for f in picked:
        try:
            image, info = read_gray(f, options=opts)
            n = count_frames(f, opts)
        except ImageReadError as exc:
            raise DataError(f"{path}: {exc}") from None
        shorts.append(min(image.shape))
        longs.append(max(image.shape))
        bits[info.bits_stored] += 1
        frames.append(n)
        formats[info.format if info.format != "raster" else f.suffix.lower().lstrip(".")] += 1
        if info.modality:
            tags[info.modality.upper()] += 1
    elapsed = time.perf_counter() - start
    modality, source = "unknown", "no DICOM Modality tag and no telling word in the data path"
    if tags:
        tag = tags.most_common(1)[0][0]
        if tag in US_MODALITIES | XRAY_MODALITIES:
            modality = "ultrasound" if tag in US_MODALITIES else "xray"
            source = f"DICOM Modality tag {tag}"
    if modality == "unknown":
        guess = _modality_from_words(str(path))
        if guess:
            modality, source = guess
    mean_frames = statistics.fmean(frames)
    return Fingerprint(
        manifest=str(path), images=len(rows), samples=round(len(rows) * mean_frames),
        patients=len(set(pids)), patient_ids=has_pid, classes=classes,
        class_counts=tuple(counts[c] for c in classes), class_patients=tuple(len(by_class[c]) for c in classes),
        test_rows=sum((r.get("split") or "").strip().lower() == "test" for r in rows),
        formats=dict(formats), modality=modality, modality_source=source,
        bits=bits.most_common(1)[0][0], frames_median=float(statistics.median(frames)), frames_max=max(frames),
        short_side_median=int(statistics.median(shorts)), long_side_median=int(statistics.median(longs)),
        read_per_s=round(len(picked) / max(elapsed, 1e-6), 1), files_read=len(picked))
