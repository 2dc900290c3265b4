"""VinDr-CXR (Nguyen et al., Scientific Data 2022) as published on PhysioNet:

    annotations/image_labels_train.csv: image_id, rad_id, one 0/1 column per label (22 local findings and
        6 global labels, "No finding" last); three radiologists per training image, one row each
    annotations/image_labels_test.csv: image_id, the same label columns (consensus of five radiologists)
    train/<image_id>.dicom, test/<image_id>.dicom

The radiologists' rows become one label per finding by `--rad-vote majority` (more than half) or `any`.
The images were de-identified: a PatientID left in the header is used, else there is no patient id.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipeline.data.adapters.common import (
    Collected,
    LeftOut,
    Options,
    Row,
    check_finding,
    dicom_fields,
    find_one,
    index_files,
    label_mode,
    missing,
    read_table,
    unlabelled,
    vote,
)
from pipeline.errors import DataError

NO_FINDING = "No finding"
NOT_LABELS = ("image_id", "rad_id")


def _votes(path: Path) -> tuple[list[str], dict[str, list[dict]]]:
    records = read_table(path)
    if not records or "image_id" not in records[0]:
        raise DataError(f"{path}: no image_id column")
    labels = [c for c in records[0] if c not in NOT_LABELS]
    by_image: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_image[rec["image_id"].strip()].append(rec)
    return labels, by_image


def read(source: Path, opts: Options) -> Collected:
    train_path = find_one(source, "image_labels_train.csv", "VinDr-CXR label file")
    test_hits = sorted(source.rglob("image_labels_test.csv"))
    found = index_files(source, (".dicom", ".dcm"))
    by_stem = {Path(n).stem: p for n, p in found.items()}
    rows, left, named, raters, names = [], [], set(), [], []
    for path, split in [(train_path, "train"), *((p, "test") for p in test_hits[:1])]:
        labels, by_image = _votes(path)
        names = names or [c for c in labels if c != NO_FINDING]
        check_finding(opts.finding, names, "VinDr-CXR")
        for image_id, recs in by_image.items():
            named.add(image_id)
            if image_id not in by_stem:
                left.append(missing(image_id, path.name))
                continue
            image = str(by_stem[image_id].resolve())
            try:
                findings = {c: vote([float(r[c] or 0) for r in recs], opts.rad_vote) for c in labels}
            except ValueError:
                left.append(LeftOut(image, f"a label cell in {path.name} is not 0/1"))
                continue
            raters.append(len(recs))
            findings, label, out = label_mode(findings, opts, NO_FINDING, image)
            if out is not None:
                left.append(out)
                continue
            findings.pop(NO_FINDING, None)
            head = dicom_fields(by_stem[image_id], ("PatientID", "PatientSex", "PatientAge"))
            rows.append(Row(image=image, label=label, findings=findings, patient_id=head["PatientID"],
                            split=split, meta={"patient_sex": head["PatientSex"], "patient_age": head["PatientAge"],
                                               "raters": str(len(recs))}))
    left += unlabelled(by_stem, named, "the image_labels_*.csv files")
    notes = [f"radiologists combined by --rad-vote {opts.rad_vote} (1 to {max(raters, default=0)} per image)"]
    if not any(r.patient_id for r in rows):
        notes.append("the DICOM headers carry no PatientID (de-identified): each image counts as its own patient")
    return Collected(rows=tuple(rows), left_out=tuple(left), findings=() if opts.finding else tuple(names),
                     notes=tuple(notes), positive=opts.finding)
