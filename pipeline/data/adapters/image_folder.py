"""One sub-folder per class, optionally inside train/ val/ test/ folders (the Kermany pediatric pneumonia set:
chest_xray/train/NORMAL/IM-0115-0001.jpeg, chest_xray/test/PNEUMONIA/person1_virus_6.jpeg).

The class is the folder below SOURCE (or below its split folder); test/ is split=test, train/ and val/ form the
cross-validation pool (the folds draw their own validation patients). `--patient-regex` takes the patient id
from the file name (group 'patient' or the first group that matched).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.adapters.common import Collected, LeftOut, Options, Row, walk_files
from pipeline.data.manifest import patient_from_path
from pipeline.errors import DataError
from pipeline.vocab import DICOM_SUFFIXES, RASTER_SUFFIXES

SPLITS = {"train": "train", "val": "train", "valid": "train", "validation": "train", "test": "test"}


def read(source: Path, opts: Options) -> Collected:
    regex = re.compile(opts.patient_regex) if opts.patient_regex else None
    top = {p.name.lower() for p in source.iterdir() if p.is_dir()}
    split_layout = bool(top & set(SPLITS))
    rows, left = [], []
    for path in walk_files(source, RASTER_SUFFIXES | (DICOM_SUFFIXES - {""})):
        parts = path.relative_to(source).parts
        image = str(path.resolve())
        split = SPLITS.get(parts[0].lower()) if split_layout else "train"
        depth = 2 if split_layout else 1
        if split is None or len(parts) <= depth:
            left.append(LeftOut(image, "not inside a class folder" + (" of train/, val/ or test/" if split_layout
                                                                      else "")))
            continue
        pid = patient_from_path(regex, path.name)  # the manifest's own rule for data.patient_regex
        if regex and not pid:
            left.append(LeftOut(image, f"--patient-regex does not match {path.name!r}"))
            continue
        rows.append(Row(image=image, label=parts[depth - 1], patient_id=pid, split=split))
    if not rows:
        raise DataError(f"{source}: no images inside class folders")
    notes = [] if regex else ["no --patient-regex: no patient ids (each image counts as its own patient)"]
    return Collected(rows=tuple(rows), left_out=tuple(left), notes=tuple(notes))
