"""One sub-folder per class, optionally inside train/ val/ test/ folders (the Kermany pediatric pneumonia set:
chest_xray/train/NORMAL/IM-0115-0001.jpeg, chest_xray/test/PNEUMONIA/person1_virus_6.jpeg).

The classes are the folders that hold images directly (split folders aside); label and split follow the rule of
a folder manifest (pipeline.data.folders): the nearest parent folder named like a class, and split=test below
a test/ folder, train/ and val/ forming the cross-validation pool. `--patient-regex` takes the patient id from
the file name (group 'patient' or the first group that matched), as data.patient_regex does.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.adapters.common import Collected, LeftOut, Options, Row
from pipeline.data.folders import folder_records
from pipeline.data.manifest import patient_from_path
from pipeline.errors import DataError

SPLIT_FOLDERS = {"train", "val", "valid", "validation", "test"}


def read(source: Path, opts: Options) -> Collected:
    regex = re.compile(opts.patient_regex) if opts.patient_regex else None
    records = folder_records(source, [], [], "label")  # every image file; labels come below
    classes = sorted({Path(r["image"]).parent.name for r in records} - SPLIT_FOLDERS - {""},
                     key=str.lower)
    if not classes:
        raise DataError(f"{source}: no images inside class folders")
    rows, left = [], []
    for rec in folder_records(source, classes, [], "label"):
        image = str((source / rec["image"]).resolve())
        name = Path(rec["image"]).name
        pid = patient_from_path(regex, name)
        if not rec["label"]:
            left.append(LeftOut(image, "not inside a class folder"))
        elif regex and not pid:
            left.append(LeftOut(image, f"--patient-regex does not match {name!r}"))
        else:
            rows.append(Row(image=image, label=rec["label"], patient_id=pid, split=rec["split"]))
    notes = [f"classes (folder names): {', '.join(classes)}"]
    if not regex:
        notes.append("no --patient-regex: no patient ids (each image counts as its own patient)")
    return Collected(rows=tuple(rows), left_out=tuple(left), notes=tuple(notes))
