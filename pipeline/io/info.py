"""What a reader did to one file, for previews, audits and debugging (one shape for every format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.vocab import LUMA_REC601

REC601 = np.array(LUMA_REC601)


@dataclass(frozen=True)
class ReadInfo:
    format: str  # dicom | nifti | raster
    frames: int  # selectable frames / slices in the file
    frame: int  # the one read
    shape: tuple[int, int]  # (rows, cols) of the image returned
    photometric: str | None = None  # DICOM PhotometricInterpretation, or the raster's PIL mode
    modality: str | None = None
    voi_applied: bool = False
    inverted: bool = False  # MONOCHROME1 (or an INVERSE presentation LUT) mirrored to bright = high
    bits_stored: int | None = None
    crop: tuple[int, int, int, int] | None = None  # ultrasound region (r0, r1, c0, c1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["crop"] = None if self.crop is None else list(self.crop)
        return d
