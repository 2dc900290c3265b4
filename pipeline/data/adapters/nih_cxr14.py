"""NIH ChestX-ray14 (Wang et al., CVPR 2017) as published on nihcc.app.box.com:

    Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv): Image Index, Finding Labels ("Effusion|Mass", "No Finding"),
        Follow-up #, Patient ID, Patient Age, Patient Gender, View Position, OriginalImage[Width, Height], ...
    images_001/images/00000001_000.png ... images_012/images/... (or one images/ folder)
    train_val_list.txt, test_list.txt: the official patient-wise split, one file name per line

Multi-label (the 14 findings, 0/1: the text-mined labels have no 'unknown') or `--finding X` vs "No Finding".
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.adapters.common import (
    Collected,
    Options,
    Row,
    check_finding,
    find_one,
    index_files,
    label_mode,
    missing,
    read_table,
    require_columns,
    unlabelled,
    view_kind,
    view_left_out,
)

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def _official_test(source: Path) -> set[str] | None:
    hits = sorted(source.rglob("test_list.txt"))
    if not hits:
        return None
    return {line.strip() for line in hits[0].read_text().splitlines() if line.strip()}


def read(source: Path, opts: Options) -> Collected:
    label_path = find_one(source, "Data_Entry_2017*.csv", "NIH label file")
    records = read_table(label_path)
    require_columns(records, COLUMNS, label_path)
    check_finding(opts.finding, FINDINGS, "NIH ChestX-ray14")
    found = index_files(source, (".png",))
    test = _official_test(source)
    rows, left = [], []
    for rec in records:
        name = rec["Image Index"].strip()
        if name not in found:
            left.append(missing(name, label_path.name))
            continue
        image = str(found[name].resolve())
        view = rec.get("View Position", "").strip()
        if (out := view_left_out(view_kind(view), opts, image)) is not None:
            left.append(out)
            continue
        names = {n.strip() for n in rec["Finding Labels"].split("|")}
        findings = {f: float(f in names) for f in (*FINDINGS, NO_FINDING)}
        findings, label, out = label_mode(findings, opts, NO_FINDING, image)
        if out is not None:
            left.append(out)
            continue
        findings.pop(NO_FINDING, None)
        meta = {"view_position": view, "patient_sex": rec.get("Patient Gender", "").strip(),
                "patient_age": rec.get("Patient Age", "").strip().lstrip("0").rstrip("Y") or "",
                "follow_up": rec.get("Follow-up #", "").strip(), "nih_finding_labels": rec["Finding Labels"]}
        rows.append(Row(image=image, label=label, findings=findings, patient_id=rec["Patient ID"].strip(),
                        split="test" if test is not None and name in test else "train", meta=meta))
    left += unlabelled(found, {r["Image Index"].strip() for r in records}, label_path.name)
    notes = ["official split: test_list.txt rows are split=test" if test is not None
             else "no test_list.txt beside the label file: every image is in the cross-validation pool"]
    return Collected(rows=tuple(rows), left_out=tuple(left), findings=() if opts.finding else FINDINGS,
                     notes=tuple(notes), positive=opts.finding)
