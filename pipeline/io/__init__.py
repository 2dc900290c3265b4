"""Read one 2-D grayscale image from a DICOM, NIfTI or raster file, as a viewer would display it.

Every reader returns ``(float32 array (rows, cols), ReadInfo)`` where a high value is bright on screen.
Frame/slice policies are resolved here and handed to the format readers as a ``pick(n) -> index``
callable, so each reader asks for the index only once it knows ``n`` from a header it already read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, ImageReadError
from pipeline.io import dicom, nifti, raster
from pipeline.io.info import ReadInfo
from pipeline.vocab import NIFTI_SUFFIXES, RASTER_SUFFIXES

__all__ = ["ReadInfo", "ReaderOptions", "count_frames", "detect_format", "nonzero_slices", "read_gray"]

_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_NIFTI1_MAGIC = (b"n+1\x00", b"ni1\x00")  # at byte 344 of an uncompressed NIfTI-1 header


@dataclass
class ReaderOptions:
    voi: str = "auto"  # auto | window | none
    voi_index: int = 0  # which of several WindowCenter/Width values (or VOI LUT Sequence items)
    frame: str | int = "middle"  # middle | first | <int>
    crop_us_region: bool = True  # crop to the SequenceOfUltrasoundRegions imaging region
    # NIfTI axis (after RAS+ reorientation and dropping singleton axes) that 2-D slices are taken along
    slice_axis: int = -1

    def __post_init__(self):
        if self.voi not in ("auto", "window", "none"):
            raise ConfigError(f"reader voi must be auto, window or none, got {self.voi!r}")
        if isinstance(self.frame, bool) or not (
            self.frame in ("middle", "first") or (isinstance(self.frame, int) and self.frame >= 0)
        ):
            raise ConfigError(f"reader frame must be middle, first or an index >= 0, got {self.frame!r}")
        if isinstance(self.voi_index, bool) or not isinstance(self.voi_index, int) or self.voi_index < 0:
            raise ConfigError(f"reader voi_index must be an integer >= 0, got {self.voi_index!r}")


def detect_format(path) -> str:
    """'dicom', 'nifti' or 'raster', by content first (a .png that is really a DICOM happens), then by name."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(348)
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(_RASTER_MAGIC):
        return "raster"
    if head[344:348] in _NIFTI1_MAGIC:
        return "nifti"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    return "dicom"  # .dcm, .dicom, no extension: DICOM without preamble is read with force=True


def _picker(path, requested: int | None, policy: str | int) -> Callable[[int], int]:
    """Turn an explicit index or the options' policy into pick(n_frames) -> index, checking the range."""

    def pick(n: int) -> int:
        if requested is not None:
            index = requested
        elif policy == "first":
            index = 0
        elif policy == "middle":
            index = n // 2  # same convention as a viewer opening a stack at shape // 2
        else:
            index = int(policy)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise ImageReadError(path, f"frame {index!r} out of range: the file has {n} frame(s)")
        return int(index)

    return pick


def read_gray(path, *, frame=None, slice_index=None, options: ReaderOptions | None = None):
    """Return (float32 (rows, cols) image, info). ``frame`` and ``slice_index`` are aliases (a manifest may
    name either column); None means the options' policy."""
    options = options or ReaderOptions()
    if frame is not None and slice_index is not None and frame != slice_index:
        raise ImageReadError(path, f"both frame={frame} and slice={slice_index} given")
    requested = frame if frame is not None else slice_index
    pick = _picker(path, requested, options.frame)
    reader = {"dicom": dicom.read, "nifti": nifti.read, "raster": raster.read}[detect_format(path)]
    image, info = reader(path, pick, options)
    return np.ascontiguousarray(image, dtype=np.float32), info


def count_frames(path, options: ReaderOptions | None = None) -> int:
    """Number of selectable frames/slices, from the header where the format allows."""
    options = options or ReaderOptions()
    fmt = detect_format(path)
    if fmt == "dicom":
        return dicom.count_frames(path)
    if fmt == "nifti":
        return nifti.count_frames(path, options)
    return raster.count_frames(path)


def nonzero_slices(path, options: ReaderOptions | None = None) -> list[int]:
    """NIfTI slices holding any nonzero voxel (reads the volume); every frame for other formats."""
    options = options or ReaderOptions()
    if detect_format(path) == "nifti":
        return nifti.nonzero_slices(path, options)
    return list(range(count_frames(path, options)))


def expanded_frames(path, policy: str, options: ReaderOptions | None = None) -> list[int]:
    """The frames or slices the `all` / `nonzero` policies of `data.frames` turn into samples: one rule for the
    manifest's rows and for GrayReader's frame stacks."""
    if policy == "all":
        return list(range(count_frames(path, options)))
    if policy == "nonzero":
        return nonzero_slices(path, options)
    raise ValueError(f"frame policy {policy!r} does not expand a file")
