"""RSNA Pneumonia Detection Challenge (Shih et al., Radiology: AI 2019), Kaggle stage 2 layout:

    stage_2_train_labels.csv: patientId, x, y, width, height, Target (one row per opacity box; Target 0 and
        blank box for an image without one)
    stage_2_detailed_class_info.csv (optional): patientId, class (Lung Opacity | Normal |
        No Lung Opacity / Not Normal)
    stage_2_train_images/<patientId>.dcm, stage_2_test_images/<patientId>.dcm (the test images are unlabelled)

Boxes become one image label: pneumonia when any box has Target 1, else normal. The patient id, sex, age and
view come from each DICOM header (PatientID, PatientSex, PatientAge, ViewPosition).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.adapters.common import (
    Collected,
    Options,
    Row,
    dicom_fields,
    find_one,
    index_files,
    missing,
    read_table,
    require_columns,
    unlabelled,
)
from pipeline.errors import DataError

HEADER = ("PatientID", "PatientSex", "PatientAge", "ViewPosition")


def read(source: Path, opts: Options) -> Collected:
    label_path = find_one(source, "stage_2_train_labels.csv", "RSNA label file")
    records = read_table(label_path)
    require_columns(records, ("patientId", "Target"), label_path)
    target: dict[str, int] = {}
    for line, rec in enumerate(records, start=2):
        t = rec["Target"].strip()
        if t not in ("0", "1"):
            raise DataError(f"{label_path.name} row {line}: Target must be 0 or 1, got {t!r}")
        target[rec["patientId"].strip()] = max(target.get(rec["patientId"].strip(), 0), int(t))
    detail_hits = sorted(source.rglob("stage_2_detailed_class_info.csv"))
    detail = {r["patientId"].strip(): r["class"].strip() for r in read_table(detail_hits[0])} if detail_hits else {}
    found = index_files(source, (".dcm",))
    rows, left = [], []
    for pid, t in target.items():
        name = f"{pid}.dcm"
        if name not in found:
            left.append(missing(name, label_path.name))
            continue
        head = dicom_fields(found[name], HEADER)
        meta = {"view_position": head["ViewPosition"], "patient_sex": head["PatientSex"],
                "patient_age": head["PatientAge"], "rsna_class": detail.get(pid, "")}
        rows.append(Row(image=str(found[name].resolve()), label="pneumonia" if t else "normal",
                        patient_id=head["PatientID"] or pid, meta=meta))
    left += unlabelled(found, {f"{p}.dcm" for p in target}, label_path.name)
    notes = ["boxes reduced to an image label: pneumonia = at least one box with Target 1",
             "no official labelled test set: hold one out with cv.test_fraction"]
    return Collected(rows=tuple(rows), left_out=tuple(left), notes=tuple(notes), positive="pneumonia")
