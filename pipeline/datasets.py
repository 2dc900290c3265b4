"""Decoding every sample once, and the per-fold MONAI datasets built on the decoded images.

MONAI's CacheDataset is not used for the decode step: it stops at the first unreadable file, while
`data.on_error: skip` must record the file in skipped.csv and go on, and it would decode every image again
for each fold. Here each (file, frame) is decoded once, before the folds are drawn, so a skipped file can
never make fold membership depend on which fold happened to read it. `decode_samples` returns what it kept
and what it skipped; the folds then index the kept samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad, SelectItemsd

from .checks import where
from .config import Config
from .errors import DataError, error_reason
from .manifest import Sample, Skipped, reader_options
from .privacy import shown_image
from .transforms import load_transforms

# cached images are stored as 16-bit fixed point: half of float32's memory, and a finer step (1.5e-5) than
# float16 has near 1.0 (4.9e-4), so training sees what inference on the file sees
_Q = 65535.0


def quantize(image: torch.Tensor) -> np.ndarray:
    return np.round(image.clamp(0, 1).numpy() * _Q).astype(np.uint16)


def dequantize(stored: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(stored.astype(np.float32) / _Q)


@dataclass(frozen=True)
class Decoded:
    """The samples that decoded, in manifest order, with their 1xSxS uint16 images when cached in memory."""

    samples: tuple[Sample, ...]
    images: tuple[np.ndarray, ...] | None
    skipped: tuple[Skipped, ...]


def _decode_one(chain, sample: Sample):
    try:
        return chain({"image": sample.image, "frame": sample.frame})["image"], None
    except Exception as exc:  # MONAI wraps the reader's ImageReadError: keep the reader's reason, on one line
        return None, error_reason(exc)


def decode_samples(cfg: Config, samples: Sequence[Sample], progress: bool = False) -> Decoded:
    """Decode every sample with the training reader settings. Unreadable ones stop the run, or with
    on_error=skip are returned as skipped; with `data.cache: memory` the decoded images are kept."""
    chain = load_transforms(cfg, reader_options(cfg))
    keep = cfg.data.cache == "memory"
    kept, images, skipped = [], [], []
    workers = max(1, min(4, torch.get_num_threads()))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda s: _decode_one(chain, s), samples)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(samples), desc="decode", unit="img", leave=False)
        for sample, (image, error) in zip(samples, results, strict=True):
            if error is not None:
                if cfg.data.on_error != "skip":
                    raise DataError(f"{where(cfg, sample.row, sample.image)}: {error}")
                skipped.append(Skipped(shown_image(cfg, sample), sample.row, error))
                continue
            kept.append(sample)
            if keep:
                images.append(quantize(image))
    return Decoded(tuple(kept), tuple(images) if keep else None, tuple(skipped))


def sample_dataset(cfg: Config, decoded: Decoded, indices: Sequence[int], transform: Compose) -> Dataset:
    """A MONAI Dataset of the samples `indices`: {'image': CxSxS float, 'target': float tensor, 'index': int}.

    From the memory cache the stored uint16 image is dequantised; without a cache the file is read again with
    the training reader settings. `transform` (augmentation + normalisation) runs per sample either way.
    """
    data = []
    for i in indices:
        s = decoded.samples[i]
        item = {"target": torch.as_tensor(s.target, dtype=torch.float32), "index": i}
        item["image"] = decoded.images[i] if decoded.images is not None else s.image
        if decoded.images is None:
            item["frame"] = s.frame
        data.append(item)
    if decoded.images is not None:
        first = Lambdad("image", dequantize)
    else:
        first = load_transforms(cfg, reader_options(cfg))
    return Dataset(data, Compose([first, transform, SelectItemsd(("image", "target", "index"))]))
