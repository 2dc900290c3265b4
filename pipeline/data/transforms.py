"""MONAI dictionary transforms: file -> 1xSxS float tensor in [0, 1] -> augmented -> normalised.

The chain is split in three so the deterministic part (decode, scale, resize, pad) runs once per image and
is cached, while augmentation and the model's normalisation run per sample:
  load_transforms(data)     {'image': path, 'frame': k}  ->  {'image': 1xSxS tensor in [0, 1]}
  augment_transforms(cfg)   random spatial and intensity changes (training only)
  normalize_transform(norm) (x - mean) / std with the statistics the model factory returned
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    Resized,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
)

from pipeline.data.checks import check_pixels
from pipeline.io import ReaderOptions, read_gray
from pipeline.schema import AugmentConfig, Config, DataConfig


class LoadGrayd(MapTransform):
    """Reads DICOM / NIfTI / PNG / JPEG as a viewer would (see pipeline.io) into a 1xHxW float tensor.

    MONAI's LoadImaged with PydicomReader is not used: it skips VOI LUT and MONOCHROME1 inversion and
    transposes 2-D radiographs (see the design notes).
    """

    def __init__(self, keys="image", options: ReaderOptions | None = None, frame_key: str = "frame",
                 min_size: int = 1):
        super().__init__(keys)
        self.options = options or ReaderOptions()
        self.frame_key = frame_key
        self.min_size = min_size

    def __call__(self, data):
        d = dict(data)
        frame = d.get(self.frame_key)
        for key in self.key_iterator(d):
            array, info = read_gray(d[key], frame=frame, options=self.options)
            check_pixels(array, d[key], self.min_size)  # NaN, constant, tiny: refused before scaling hides it
            d[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
            d[f"{key}_info"] = info
        return d


def load_transforms(data: DataConfig) -> Compose:
    size = data.image_size
    if data.intensity == "percentile":
        scale = ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    else:
        scale = ScaleIntensityd("image", minv=0.0, maxv=1.0)
    return Compose([
        LoadGrayd("image", options=data.reader_options(), min_size=data.min_size),
        scale,
        # keep the aspect ratio: longest side -> size, then pad the short side with black (0)
        Resized("image", spatial_size=size, size_mode="longest", mode="bilinear", anti_aliasing=True),
        SpatialPadd("image", spatial_size=(size, size), mode="constant", value=0.0),
        EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False),
    ])


def augment_transforms(aug: AugmentConfig, image_size: int) -> list:
    if not aug.enabled:
        return []
    ts: list = []
    if aug.rotate_deg or aug.scale or aug.translate:
        ts.append(RandAffined(
            "image", prob=0.8,
            rotate_range=np.deg2rad(aug.rotate_deg),
            scale_range=(aug.scale, aug.scale),
            translate_range=(aug.translate * image_size, aug.translate * image_size),
            mode="bilinear", padding_mode="zeros",
        ))
    if aug.flip:
        ts.append(RandFlipd("image", prob=aug.flip, spatial_axis=1))
    if aug.gamma:
        ts.append(RandAdjustContrastd("image", prob=0.5, gamma=(1 - aug.gamma, 1 + aug.gamma)))
    if aug.noise_std:
        ts.append(RandGaussianNoised("image", prob=0.5, std=aug.noise_std))
    return ts


def normalize_transform(mean, std) -> NormalizeIntensityd:
    return NormalizeIntensityd("image", subtrahend=list(mean), divisor=list(std), channel_wise=True)


def sample_transforms(cfg: Config, mean, std, train: bool) -> Compose:
    """What runs per sample on a cached 1xSxS image in [0, 1]."""
    ts = [EnsureTyped("image", data_type="tensor", dtype=torch.float32, track_meta=False)]
    if train:
        ts += augment_transforms(cfg.augment, cfg.data.image_size)
    ts.append(normalize_transform(mean, std))
    return Compose(ts)
