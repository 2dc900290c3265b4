"""Checks on the data that stop a run early, by name, instead of an hour in or never.

Before any pixel is decoded (`before_decode`): every file's header (exists, is a file, not empty, a DICOM header
with Rows/Columns and PixelData in a transfer syntax an installed pydicom decoder handles, pixel data as long as
the header says), duplicate rows, one file under two patient ids (a leak), conflicting labels of one patient,
and whether the memory cache fits. These read headers only, in threads, so a bad last row of a long manifest is
reported in seconds.

On the decoded pixels (`check_pixels`, called by the reader transform before scaling to [0, 1]): NaN/Inf,
constant images and images below `data.min_size`. After decoding (`after_decode`): the same pixels under two
patient ids (a leak), and classes that `on_error: skip` emptied. After the folds are drawn (`check_folds`): a
validation set without some class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.data.manifest import Manifest, Sample, Skipped
from pipeline.errors import DataError, ImageReadError
from pipeline.logs import log
from pipeline.schema import Config

_PIXEL_KEYS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED = 0xFFFFFFFF


def _dicom_problem(path: str) -> str | None:
    """What is wrong with a DICOM file as far as its header tells, or None. Pixel data is not read
    (defer_size keeps it on disk; only its declared length and position are looked at)."""
    import pydicom
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(path, force=True, defer_size=1024)
    except Exception as e:  # pydicom raises many types for a damaged header
        return f"not readable as DICOM ({type(e).__name__}: {e})"
    if "Rows" not in ds or "Columns" not in ds:
        # same wording as the pixel reader (pipeline.io.dicom.read), which finds the same thing later
        what = "DICOM without an image" if ds.preamble is not None else "not a DICOM image (no DICM prefix)"
        return f"{what}: no Rows/Columns"
    key = next((k for k in _PIXEL_KEYS if k in ds), None)
    if key is None:
        return "DICOM without pixel data (no PixelData element)"
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax is not None:
        name = getattr(tsyntax, "name", str(tsyntax))
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            return f"no installed decoder handles transfer syntax {name} ({tsyntax})"
        if not decoder.is_available:
            missing = "; ".join(f"{k}: {v}" for k, v in decoder.missing_dependencies) or "no plugin"
            return f"no installed decoder handles transfer syntax {name} ({tsyntax}): {missing}"
    elem = ds.get_item(key, keep_deferred=True)
    length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    if length not in (None, _UNDEFINED) and tell is not None:
        have = os.path.getsize(path) - tell
        if have < length:
            return (f"pixel data is less than expected ({have} vs {length} bytes): the file is truncated "
                    "(half copied?)")
    return None


def _raster_problem(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path):
            return None
    except Exception as e:
        return f"not readable as an image ({type(e).__name__}: {e})"


def header_problem(path: str) -> str | None:
    """A one-line reason why `path` cannot be decoded, found without decoding pixels; None when it looks fine."""
    from pipeline.io import detect_format

    p = Path(path)
    if not p.exists():
        return "file not found"
    if not p.is_file():
        return "not a regular file (a folder?)" if p.is_dir() else "not a regular file"
    if p.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        fmt = detect_format(p)
    except ImageReadError as e:
        return e.reason
    if fmt == "dicom":
        return _dicom_problem(str(p))
    if fmt == "raster":
        return _raster_problem(str(p))
    return None  # NIfTI: nibabel reads the header lazily; the decode step reports it


def where(cfg: Config, row: int | None, image: str) -> str:
    """'labels.csv row 17: /x/bad.dcm' (the file left out when privacy.hide_file_names is on)."""
    name = Path(cfg.data.manifest).name
    head = f"{name} row {row}" if row is not None else name
    return head if cfg.privacy.hide_file_names else f"{head}: {image}"


def check_headers(cfg: Config, manifest: Manifest) -> Manifest:
    """Header problems of every file, before any pixel is decoded: the first one (in manifest order) stops the
    run naming row and file, or with on_error=skip every affected row is moved to `skipped`."""
    files = list(dict.fromkeys(s.image for s in manifest.samples))
    with ThreadPoolExecutor(8) as pool:
        problems = dict(zip(files, pool.map(header_problem, files), strict=True))
    if not any(problems.values()):
        return manifest
    kept, skipped = [], list(manifest.skipped)
    for s in manifest.samples:
        reason = problems[s.image]
        if reason is None:
            kept.append(s)
        elif cfg.data.on_error != "skip":
            raise DataError(f"{where(cfg, s.row, s.image)}: {reason}")
        elif not skipped or (skipped[-1].row, skipped[-1].reason) != (s.row, reason):  # frames of one row once
            skipped.append(Skipped(s.image, s.row, reason))
    if not kept:
        raise DataError(f"{manifest.path}: no usable rows ({len(skipped)} skipped; see skipped.csv)")
    return replace(manifest, samples=tuple(kept), skipped=tuple(skipped))


def check_rows(cfg: Config, samples: tuple[Sample, ...]) -> None:
    """Duplicate rows (same file and frame twice) and conflicting labels are warned about (errors with
    data.duplicates=error); one file under two patient ids is a leak and always an error."""
    by_file = defaultdict(list)
    for s in samples:
        by_file[os.path.realpath(s.image)].append(s)
    for members in by_file.values():
        patients = sorted({m.patient_id for m in members})
        if len(patients) > 1:
            rows = ", ".join(str(m.row) for m in members[:4])
            raise DataError(f"{where(cfg, members[0].row, members[0].image)}: the same file is listed under "
                            f"patients {patients[0]} and {patients[1]} (rows {rows}): its images would land in "
                            "different folds (a leak); give the rows one patient id or remove one")
    problems = []
    first_row: dict = {}
    dups = []
    for s in samples:
        row = first_row.setdefault(s.key, s.row)
        if row != s.row:
            dups.append((row, s.row))
    if dups:
        first, second = dups[0]
        problems.append(f"{len(dups)} duplicate manifest rows (same image and frame), e.g. rows {first} and "
                        f"{second}: the image counts twice")
    if cfg.task.type != "multilabel":
        labels = defaultdict(set)
        for s in samples:
            labels[s.patient_id].add(s.label)
        mixed = sorted(p for p, v in labels.items() if len(v) > 1)
        if mixed:
            problems.append(f"{len(mixed)} patients have conflicting labels, e.g. {mixed[0]}: "
                            f"{sorted(labels[mixed[0]])}")
    for text in problems:
        if cfg.data.duplicates == "error":
            raise DataError(f"{Path(cfg.data.manifest).name}: {text} (data.duplicates=error)")
        log.warning(f"warning: {text}")


def _available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: Config, n_samples: int) -> None:
    """data.cache=memory keeps N x S x S uint16 images: stop before decoding when that cannot fit."""
    if cfg.data.cache != "memory":
        return
    need = n_samples * cfg.data.image_size**2 * 2
    have = _available_memory()
    if have is not None and need > 0.8 * have:
        raise DataError(f"data.cache: memory needs {need / 2**30:.1f} GiB for {n_samples} images of "
                        f"{cfg.data.image_size} px but {have / 2**30:.1f} GiB are available; set "
                        "data.cache: disk (or none), or a smaller data.image_size")


def before_decode(cfg: Config, manifest: Manifest) -> Manifest:
    manifest = check_headers(cfg, manifest)
    check_rows(cfg, manifest.samples)
    check_memory(cfg, len(manifest.samples))
    return manifest


def check_pixels(array: np.ndarray, path, min_size: int) -> None:
    """Refuse, by name, what would otherwise become an all-black or NaN tensor without a word."""
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ImageReadError(path, f"{bad} of {array.size} pixels are NaN or infinite")
    if min(array.shape) < min_size:
        raise ImageReadError(path, f"image is {array.shape[0]}x{array.shape[1]} pixels, smaller than "
                                   f"data.min_size={min_size} on the short side")
    if array.size and array.max() == array.min():
        raise ImageReadError(path, f"constant image (every pixel is {float(array.flat[0]):g})")


def _class_names(cfg: Config, samples) -> set[str]:
    if cfg.task.type == "binary":
        return {cfg.task.positive if s.target == 1 else cfg.task.negative for s in samples}
    return {cfg.task.classes[s.target] for s in samples}


def pixel_digest(array: np.ndarray) -> str:
    """Identity of decoded pixels, the one rule for training's leak check and the audit's duplicate groups:
    dtype and shape are hashed too, so two images with the same bytes in another layout stay distinct."""
    h = hashlib.md5(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def group_copies(cfg: Config, samples, digests: list[str], *, strict: bool = True) -> tuple[tuple[Sample, ...], int, int]:
    """(samples, number grouped, number under another label): an image WITHOUT a known patient id that repeats
    another image's pixels (same digest) joins that image's patient: public sets without ids (BUSI) hold exact
    duplicates, and two copies in different folds would be a leak. Two known, different ids are an error.
    Training and the audit both group with this rule, so the audit's folds are training's; the audit
    (strict=False) lists the leaks it finds instead of stopping at the first."""
    owner: dict[str, Sample] = {}
    out, grouped, relabelled = list(samples), 0, 0
    for i, (s, digest) in enumerate(zip(samples, digests, strict=True)):
        first = owner.setdefault(digest, s)
        relabelled += first is not s and first.label != s.label
        if first.patient_id == s.patient_id:
            continue
        if not s.patient_known:
            out[i] = dataclasses.replace(s, patient_id=first.patient_id, patient_known=first.patient_known)
            grouped += 1
            continue
        if not strict:
            continue
        if not first.patient_known:
            raise DataError(f"{where(cfg, first.row, first.image)}: same pixels as row {s.row} (patient "
                            f"{s.patient_id}) but no patient id: give both rows the same patient id")
        raise DataError(f"{where(cfg, s.row, s.image)}: same pixels as row {first.row} but patient "
                        f"{s.patient_id} vs {first.patient_id}: one image under two patients is a leak "
                        "between folds; remove the copy or give both one patient id")
    return tuple(out), grouped, relabelled


def after_decode(cfg: Config, decoded, n_skipped: int):
    """The same pixels under two patient ids (with a memory or disk cache: the decoded images are at hand;
    `group_copies`), and classes that skipped files emptied. Returns the decoded samples, copies grouped."""
    if not decoded.samples:
        raise DataError(f"{Path(cfg.data.manifest).name}: no readable samples ({n_skipped} skipped; "
                        "see skipped.csv)")
    if decoded.images is not None:
        samples, grouped, relabelled = group_copies(
            cfg, decoded.samples, [pixel_digest(decoded.images.get(i)) for i in range(len(decoded.samples))])
        if grouped:
            log.warning(f"warning: {grouped} images without a patient id repeat another image's pixels exactly; "
                        "each joins its copy's group so the copies stay in one fold")
            decoded = dataclasses.replace(decoded, samples=samples)
        if relabelled:  # label noise, not a leak: worth a look before trusting the metrics (graystem audit lists them)
            log.warning(f"warning: {relabelled} images repeat another image's pixels exactly under a different label; "
                        "run `graystem audit` to list them")
    if cfg.task.type != "multilabel":
        missing = [c for c in cfg.task.classes if c not in _class_names(cfg, decoded.samples)]
        if missing:
            raise DataError(f"{Path(cfg.data.manifest).name}: class {missing[0]!r} has no readable samples"
                            + (f" after {n_skipped} skipped (see skipped.csv)" if n_skipped else ""))
    return decoded


def check_folds(cfg: Config, samples, splits) -> None:
    """A validation set without some class gives undefined AUROC and a meaningless best epoch: refuse it."""
    if cfg.task.type == "multilabel":
        return
    for fold in splits.folds:
        _, val_idx = splits.fold_indices(samples, fold.fold)
        missing = [c for c in cfg.task.classes if c not in _class_names(cfg, [samples[i] for i in val_idx])]
        if missing:
            raise DataError(f"cv.folds: fold {fold.fold}'s validation set has no {missing[0]!r} sample "
                            f"({len(fold.val_patients)} patients); lower cv.folds or add patients of that class")
