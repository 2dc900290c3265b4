"""MedMNIST v2 / MedMNIST+ (Yang et al., Scientific Data 2023), one 2D set as its .npz file:

    train_images (N, H, W) uint8, or (N, H, W, 3) for the colour sets; train_labels (N, 1), or (N, 14) 0/1 for
    ChestMNIST (multi-label); the same for val_ and test_. H = W = 28 (MedMNIST v2), 64, 128 or 224 (MedMNIST+).

Images are written as PNG under DIR/images/<split>/ (manifest paths relative to DIR). train and val are the
cross-validation pool, test is split=test. MedMNIST publishes no patient ids, so none are written; the summary
counts the exact pixel copies that training will group (copies between the pool and the test set are left out
of the test set: grouping them would put one "patient" in both).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.data.adapters.common import Collected, LeftOut, Options, Row
from pipeline.errors import DataError

# label names of the chest and ultrasound sets, from medmnist's INFO (the npz holds indices only)
LABELS = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_benign"),
    "chestmnist": ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"),
}
POSITIVE = {"pneumoniamnist": "pneumonia", "breastmnist": "malignant"}
PARTS = (("train", "train"), ("val", "train"), ("test", "test"))


def _load(source: Path) -> dict[str, np.ndarray]:
    if source.suffix != ".npz" or not source.is_file():
        raise DataError(f"{source}: the medmnist format takes a MedMNIST .npz file as SOURCE")
    try:
        with np.load(source) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # truncated download, not an npz
        raise DataError(f"{source}: not a readable .npz file ({exc})") from None
    need = [f"{p}_{k}" for p, _ in PARTS for k in ("images", "labels")]
    if missing := [k for k in need if k not in arrays]:
        raise DataError(f"{source}: not a MedMNIST 2D file, missing arrays {missing} (found {sorted(arrays)})")
    if arrays["train_images"].ndim not in (3, 4):
        raise DataError(f"{source}: train_images has shape {arrays['train_images'].shape}; 3D sets are not supported")
    return arrays


def _digest(image: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(image).tobytes()).hexdigest()


def read(source: Path, opts: Options) -> Collected:
    from PIL import Image

    out = opts.out

    arrays = _load(source)
    flag = source.stem.split("_")[0].lower()  # pneumoniamnist_64.npz -> pneumoniamnist
    multilabel = arrays["train_labels"].shape[1] > 1
    width = arrays["train_labels"].shape[1] if multilabel else int(max(arrays[f"{p}_labels"].max() for p, _ in PARTS)) + 1
    names = LABELS.get(flag) or tuple(f"class_{i}" for i in range(width))
    rows, left = [], []
    owner: dict[str, tuple[str, str]] = {}  # pixel digest -> (split, first image)
    groups: dict[str, list[str]] = defaultdict(list)
    for part, split in PARTS:
        folder = out / "images" / part
        folder.mkdir(parents=True, exist_ok=True)
        for i, (pixels, lab) in enumerate(zip(arrays[f"{part}_images"], arrays[f"{part}_labels"], strict=True)):
            rel = f"images/{part}/{part}_{i:05d}.png"
            Image.fromarray(pixels).save(out / rel)
            key = _digest(pixels)
            first = owner.setdefault(key, (split, rel))
            if split == "test" and first[0] == "train":
                left.append(LeftOut(rel, f"same pixels as {first[1]} of the train/val pool (a leak across the "
                                         "official split)"))
                continue
            groups[key].append(rel)
            if multilabel:
                rows.append(Row(image=rel, findings={n: float(v) for n, v in zip(names, lab, strict=True)},
                                split=split, meta={"medmnist_split": part}))
            else:
                rows.append(Row(image=rel, label=names[int(lab[0])], split=split, meta={"medmnist_split": part}))
    copies = [g for g in groups.values() if len(g) > 1]
    notes = ["MedMNIST publishes no patient ids: none written (each image counts as its own patient)",
             f"{sum(len(g) - 1 for g in copies)} images repeat another image's pixels exactly ({len(copies)} groups"
             + (f", e.g. {' = '.join(copies[0][:3])}" if copies else "")
             + "); training groups each set of copies into one fold",
             f"images {arrays['train_images'].shape[1]}x{arrays['train_images'].shape[2]} px: use "
             "configs/medmnist.yaml (data.min_size below the chest config's 32)"]
    if flag not in LABELS:
        notes.append(f"label names of '{flag}' unknown here: classes written as class_0 ... class_{width - 1}")
    return Collected(rows=tuple(rows), left_out=tuple(left), findings=names if multilabel else (),
                     notes=tuple(notes), positive=POSITIVE.get(flag))
