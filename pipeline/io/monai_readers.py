"""The project's viewer-accurate readers as `monai.data.ImageReader`s, for MONAI users' own pipelines.

    from monai.transforms import LoadImage
    from pipeline.io.monai_readers import GrayReader
    img = LoadImage(reader=GrayReader(voi="auto", frame="middle"), image_only=True)("film.dcm")

gives exactly the (rows, cols) pixels `pipeline.io.read_gray` returns (VOI LUT / windowing, MONOCHROME1
inverted, palette and colour as Rec.601 luminance, the ultrasound region cropped) -- the pixels training saw
before scaling and resizing. MONAI's own PydicomReader is not that: it skips VOI LUT and MONOCHROME1 inversion
and transposes 2-D images to (cols, rows). Here the array keeps the project's orientation, rows first, no
transpose, and the meta dict says 'original_channel_dim': 'no_channel', so `ensure_channel_first=True` (or
EnsureChannelFirst) gives 1xHxW like the project's LoadGrayd.

GrayReader dispatches by content (detect_format); DicomGrayReader, NiftiGrayReader and RasterGrayReader accept
only their format, for LoadImage's automatic reader choice by suffix. ReaderOptions' fields (voi, voi_index,
frame / slice policy, crop_us_region, slice_axis) are constructor arguments; `frame` may be an index, or
'all' / 'nonzero' (the cine or volume policies of `data.frames`): then every such frame or slice is read and
the array is (frames, rows, cols) on the channel axis, so a model scores them as a batch and the caller
averages, as training's per-file aggregation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys

from pipeline.errors import ImageReadError
from pipeline.io import ReaderOptions, detect_format, expanded_frames, read_gray
from pipeline.vocab import DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES

__all__ = ["DicomGrayReader", "GrayReader", "NiftiGrayReader", "RasterGrayReader"]


class GrayReader(ImageReader):
    """Any format pipeline.io reads; one 2-D grey image per file (the frame/slice the policy picks)."""

    formats: tuple[str, ...] = ("dicom", "nifti", "raster")

    def __init__(self, voi: str = "auto", voi_index: int = 0, frame: str | int = "middle",
                 crop_us_region: bool = True, slice_axis: int = -1, options: ReaderOptions | None = None):
        super().__init__()
        self.expand = frame if frame in ("all", "nonzero") else None  # several frames per file
        self.options = options or ReaderOptions(voi=voi, voi_index=voi_index, frame="middle" if self.expand else frame,
                                                crop_us_region=crop_us_region, slice_axis=slice_axis)

    def _suffix_ok(self, name: str) -> bool:
        name = name.lower()
        suffix = Path(name).suffix
        ok = {"dicom": suffix in DICOM_SUFFIXES, "nifti": name.endswith(NIFTI_SUFFIXES),
              "raster": suffix in RASTER_SUFFIXES}
        return any(ok[f] for f in self.formats)

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(self._suffix_ok(str(n)) for n in names)

    def read(self, data, **kwargs):
        """Decode now (one or several files): a list of (array, ReadInfo, path)."""
        names = [data] if isinstance(data, (str, Path)) else list(data)
        out = []
        for name in names:
            fmt = detect_format(name)
            if fmt not in self.formats:
                raise ImageReadError(name, f"{type(self).__name__} reads {'/'.join(self.formats)}, not {fmt}")
            if self.expand and kwargs.get("frame") is None:
                read = [read_gray(name, frame=k, options=self.options)
                        for k in expanded_frames(name, self.expand, self.options)]
                array, info = np.stack([a for a, _ in read]), read[0][1]
            else:
                array, info = read_gray(name, frame=kwargs.get("frame"), options=self.options)
            out.append((array, info, str(name)))
        return out if len(out) > 1 else out[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """(array, meta): one image (rows, cols); several files, or the frames of the 'all' / 'nonzero' policies,
        on a leading channel axis."""
        items = img if isinstance(img, list) else [img]
        arrays = [a for a, _, _ in items]
        info = items[0][1]
        if self.expand:
            array, channel_dim = np.concatenate(arrays), 0
        elif len(arrays) > 1:
            array, channel_dim = np.stack(arrays), 0
        else:
            array, channel_dim = arrays[0], "no_channel"
        rows, cols = arrays[0].shape[-2:]
        meta = {
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
            MetaKeys.SPATIAL_SHAPE: np.asarray((rows, cols)),
            # pixel indices, no physical spacing: identity affine of a 2-D image (homogeneous 3x3)
            MetaKeys.AFFINE: np.eye(3), MetaKeys.ORIGINAL_AFFINE: np.eye(3),
            "format": info.format, "frame": info.frame, "frames": info.frames,
            "photometric": info.photometric or "", "modality": info.modality or "",
            "voi_applied": info.voi_applied, "inverted": info.inverted,
        }
        return array, meta


class DicomGrayReader(GrayReader):
    formats = ("dicom",)


class NiftiGrayReader(GrayReader):
    formats = ("nifti",)


class RasterGrayReader(GrayReader):
    formats = ("raster",)
