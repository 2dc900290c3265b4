"""BUSI (Al-Dhabyani et al., Data in Brief 2020), Dataset_BUSI_with_GT as published:

    benign/benign (1).png, benign/benign (1)_mask.png, benign/benign (1)_mask_1.png, malignant/..., normal/...

The label is the class folder (the rule of a folder manifest, pipeline.data.folders); the segmentation masks
(`*_mask*.png`) are left out and listed. The set has no patient ids and holds exact and near copies: folds
cannot be grouped by patient (training groups exact copies).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from pipeline.data.adapters.common import Collected, LeftOut, Options, Row
from pipeline.data.folders import folder_records

CLASSES = ("benign", "malignant", "normal")
MASK = "*_mask*"


def read(source: Path, opts: Options) -> Collected:
    rows, left = [], []
    for rec in folder_records(source, list(CLASSES), [], "label"):
        image = str((source / rec["image"]).resolve())
        if fnmatch.fnmatch(Path(rec["image"]).name, MASK):
            left.append(LeftOut(image, "segmentation mask (*_mask*)"))
        elif not rec["label"]:
            left.append(LeftOut(image, f"not below a class folder ({', '.join(CLASSES)})"))
        else:
            rows.append(Row(image=image, label=rec["label"]))
    return Collected(rows=tuple(rows), left_out=tuple(left), positive="malignant",
                     notes=("BUSI has no patient ids and holds exact and near copies: exact copies are grouped at "
                            "training time, near copies are not, so cross-validated figures are optimistic",
                            "'normal' (no lesion) is a third class: --classes benign,malignant makes the binary task"))
