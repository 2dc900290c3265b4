"""Decoding every sample once, and the per-fold datasets built on the decoded images.

MONAI's CacheDataset is not used for the decode step: it stops at the first unreadable file, while
`data.on_error: skip` must record the file in skipped.csv and go on, and it would decode every image again
for each fold. Here each (file, frame) is decoded once, before the folds are drawn, so a skipped file can
never make fold membership depend on which fold happened to read it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import Config
from .errors import ImageReadError
from .manifest import Manifest, reader_options
from .transforms import load_transforms

# cached images are stored as 16-bit fixed point: half of float32's memory, and a finer step (1.5e-5) than
# float16 has near 1.0 (4.9e-4), so training sees what inference on the file sees
_Q = 65535.0


class DecodedImages:
    """Decoded 1xSxS images in [0, 1], by row index."""

    def __init__(self, cfg: Config, manifest: Manifest, progress: bool = False):
        self.cfg = cfg
        self.chain = load_transforms(cfg, reader_options(cfg))
        self.keep = cfg.data.cache == "memory"
        self.images: dict[int, np.ndarray] = {}
        rows = manifest.rows
        ok: list[dict] = []
        workers = max(1, min(4, torch.get_num_threads()))
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(self._decode, rows)
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(rows), desc="decode", unit="img", leave=False)
            for row, (image, error) in zip(rows, results, strict=True):
                if error is not None:
                    if cfg.data.on_error != "skip":
                        raise error
                    manifest.skipped.append({"image": row["image"], "row": row["row"], "reason": error.reason})
                    continue
                if self.keep:
                    self.images[len(ok)] = np.round(image.clamp(0, 1).numpy() * _Q).astype(np.uint16)
                ok.append(row)
        manifest.rows[:] = ok

    def _decode(self, row):
        try:
            out = self.chain({"image": row["image"], "frame": row["frame"]})
            return out["image"], None
        except ImageReadError as exc:
            return None, exc
        except Exception as exc:  # a transform failing on odd data still names the file, on one line
            return None, ImageReadError(row["image"], f"{type(exc).__name__}: {exc}")

    def get(self, index: int, row: dict) -> torch.Tensor:
        if self.keep:
            return torch.from_numpy(self.images[index].astype(np.float32) / _Q)
        return self.chain({"image": row["image"], "frame": row["frame"]})["image"]


class SampleDataset(Dataset):
    """Rows `indices` of the manifest, each as {'image': CxSxS, 'target': tensor, 'index': row index}."""

    def __init__(self, decoded: DecodedImages, rows: list[dict], indices, transform):
        self.decoded = decoded
        self.rows = rows
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        row = self.rows[idx]
        item = self.transform({"image": self.decoded.get(idx, row)})
        target = torch.as_tensor(row["target"], dtype=torch.float32)
        return {"image": item["image"].as_tensor() if hasattr(item["image"], "as_tensor") else item["image"],
                "target": target, "index": idx}
