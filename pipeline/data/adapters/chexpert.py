"""CheXpert (Irvin et al., AAAI 2019) as Stanford ships it (CheXpert-v1.0 or CheXpert-v1.0-small):

    train.csv, valid.csv: Path, Sex, Age, Frontal/Lateral, AP/PA, No Finding, Enlarged Cardiomediastinum, ...,
        Support Devices; cells 1.0 / 0.0 / -1.0 (uncertain) / blank (not mentioned)
    Path = CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg (relative to the folder above)

train.csv is the cross-validation pool; valid.csv (labelled by radiologist consensus) is split=test.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.adapters.common import (
    Collected,
    Options,
    Row,
    check_finding,
    healthy_negatives,
    label_mode,
    missing,
    read_table,
    require_columns,
    uncertain_value,
    unlabelled,
    view_kind,
    view_left_out,
    walk_files,
)
from pipeline.errors import DataError

OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
NO_FINDING = "No Finding"
FINDINGS = tuple(o for o in OBSERVATIONS if o != NO_FINDING)
PATH_IDS = re.compile(r"(patient\d+)/(study\d+)/")


def chexpert_findings(rec: dict, observations, opts: Options, where: str) -> dict[str, float | None]:
    """One label row -> {observation: 1/0/None} under --uncertain; shared with MIMIC-CXR-JPG (same labeller)."""
    try:
        values = {o: uncertain_value(rec.get(o, ""), opts.uncertain) for o in observations}
    except ValueError:
        raise DataError(f"{where}: a label cell is not a number: {[rec.get(o) for o in observations]}") from None
    return healthy_negatives(values, NO_FINDING)


def _resolve(source: Path, text: str) -> Path:
    """Path cells start with the archive's own folder name: try beside and inside SOURCE."""
    rel = Path(text)
    for cand in (source.parent / rel, source / rel, source / Path(*rel.parts[1:])):
        if cand.is_file():
            return cand
    return source / Path(*rel.parts[1:])


def read(source: Path, opts: Options) -> Collected:
    check_finding(opts.finding, FINDINGS, "CheXpert")
    files = [(source / "train.csv", "train"), (source / "valid.csv", "test")]
    if not files[0][0].is_file():
        raise DataError(f"{source}: no train.csv (SOURCE is the CheXpert-v1.0[-small] folder)")
    rows, left, named = [], [], set()
    for path, split in files:
        if not path.is_file():
            continue
        records = read_table(path)
        require_columns(records, ("Path", "Frontal/Lateral", *OBSERVATIONS), path)
        for line, rec in enumerate(records, start=2):
            image_path = _resolve(source, rec["Path"])
            named.add(str(image_path.resolve()))
            if not image_path.is_file():
                left.append(missing(rec["Path"], path.name))
                continue
            image = str(image_path.resolve())
            if (out := view_left_out(view_kind(rec["Frontal/Lateral"]), opts, image)) is not None:
                left.append(out)
                continue
            findings = chexpert_findings(rec, OBSERVATIONS, opts, f"{path.name} row {line}")
            findings, label, out = label_mode(findings, opts, NO_FINDING, image)
            if out is not None:
                left.append(out)
                continue
            findings.pop(NO_FINDING, None)
            ids = PATH_IDS.search(rec["Path"])
            patient, study = (ids.group(1), f"{ids.group(1)}/{ids.group(2)}") if ids else ("", "")
            meta = {"view_position": rec.get("AP/PA", "").strip() or rec["Frontal/Lateral"].strip(),
                    "patient_sex": rec.get("Sex", "").strip(), "patient_age": rec.get("Age", "").strip(),
                    "study_id": study}
            rows.append(Row(image=image, label=label, findings=findings, patient_id=patient, split=split,
                            meta=meta))
    found = {str(p.resolve()): p for p in walk_files(source, (".jpg", ".png"))}
    left += unlabelled(found, named, "train.csv or valid.csv")
    notes = [f"uncertain labels (-1) read as --uncertain {opts.uncertain}",
             "valid.csv (radiologist consensus) is split=test; train.csv is the cross-validation pool"]
    return Collected(rows=tuple(rows), left_out=tuple(left), findings=() if opts.finding else FINDINGS,
                     notes=tuple(notes), positive=opts.finding)
