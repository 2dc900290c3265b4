"""MIMIC-CXR-JPG v2 (Johnson et al., PhysioNet) as published:

    mimic-cxr-2.0.0-chexpert.csv.gz: subject_id, study_id, the 14 CheXpert observations (1.0/0.0/-1.0/blank)
    mimic-cxr-2.0.0-metadata.csv.gz: dicom_id, subject_id, study_id, ..., ViewPosition, Rows, Columns, StudyDate
    mimic-cxr-2.0.0-split.csv.gz:    dicom_id, study_id, subject_id, split (train | validate | test)
    files/p10/p10000032/s50414267/<dicom_id>.jpg

Labels belong to the study (the report), so every image of a study gets its study's labels; the patient is
subject_id. Official 'test' is split=test; 'train' and 'validate' form the cross-validation pool.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.adapters.chexpert import FINDINGS, NO_FINDING, OBSERVATIONS, chexpert_findings
from pipeline.data.adapters.common import (
    Collected,
    LeftOut,
    Options,
    Row,
    check_finding,
    find_one,
    label_mode,
    missing,
    read_table,
    require_columns,
    view_kind,
    view_left_out,
    walk_files,
)


def _image(source: Path, subject: str, study: str, dicom_id: str) -> Path:
    return source / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"


def read(source: Path, opts: Options) -> Collected:
    check_finding(opts.finding, FINDINGS, "MIMIC-CXR-JPG")
    label_path = find_one(source, "mimic-cxr-2.0.0-chexpert.csv*", "MIMIC-CXR-JPG label file")
    meta_path = find_one(source, "mimic-cxr-2.0.0-metadata.csv*", "MIMIC-CXR-JPG metadata file")
    labels = read_table(label_path)
    require_columns(labels, ("subject_id", "study_id", *OBSERVATIONS), label_path)
    meta = read_table(meta_path)
    require_columns(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition"), meta_path)
    split_hits = sorted(source.rglob("mimic-cxr-2.0.0-split.csv*"))
    official = {r["dicom_id"]: r["split"] for r in read_table(split_hits[0])} if split_hits else {}
    by_study = {(r["subject_id"], r["study_id"]): (line, r) for line, r in enumerate(labels, start=2)}
    rows, left, named = [], [], set()
    for rec in meta:
        subject, study, dicom_id = rec["subject_id"].strip(), rec["study_id"].strip(), rec["dicom_id"].strip()
        path = _image(source, subject, study, dicom_id)
        named.add(str(path.resolve()))
        if not path.is_file():
            left.append(missing(str(path.relative_to(source)), meta_path.name))
            continue
        image = str(path.resolve())
        if (subject, study) not in by_study:
            left.append(LeftOut(image, f"its study s{study} has no row in {label_path.name}"))
            continue
        view = rec["ViewPosition"].strip()
        if (out := view_left_out(view_kind(view), opts, image)) is not None:
            left.append(out)
            continue
        line, lab = by_study[(subject, study)]
        findings = chexpert_findings(lab, OBSERVATIONS, opts, f"{label_path.name} row {line}")
        findings, label, out = label_mode(findings, opts, NO_FINDING, image)
        if out is not None:
            left.append(out)
            continue
        findings.pop(NO_FINDING, None)
        rows.append(Row(image=image, label=label, findings=findings, patient_id=subject,
                        split="test" if official.get(dicom_id) == "test" else "train",
                        meta={"view_position": view, "study_id": study,
                              "study_date": rec.get("StudyDate", "").strip()}))
    found = {str(p.resolve()): p for p in walk_files(source / "files", (".jpg",))} if (source / "files").is_dir() else {}
    left += [LeftOut(str(p), f"no row in {meta_path.name}") for k, p in sorted(found.items()) if k not in named]
    notes = [f"uncertain labels (-1) read as --uncertain {opts.uncertain}",
             "labels are per study (report), copied to each image of the study",
             "official split: 'test' is split=test" if split_hits else "no split file: every image is in the "
             "cross-validation pool"]
    return Collected(rows=tuple(rows), left_out=tuple(left), findings=() if opts.finding else FINDINGS,
                     notes=tuple(notes), positive=opts.finding)
