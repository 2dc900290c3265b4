"""BUS-BRA (Gomez-Flores et al., Medical Physics 2024), Zenodo 10.5281/zenodo.7730709:

    bus_data.csv: ID (bus_0001-l), Case (the patient), Histology, Pathology (benign | malignant), BIRADS,
        Device, Plane, Side, Height, Width, BBOX
    5-fold-cv.csv / 10-fold-cv.csv: ID, Case and the published fold of each image (1-based)
    Images/bus_0001-l.png, Masks/mask_0001-l.png (segmentations: never read as images)

Label: Pathology (biopsy-proven). The published folds are kept (`--folds 5|10`, written 0-based), so results
compare with the paper's; BI-RADS, histology, device, plane and side are kept as columns.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.adapters.common import (
    Collected,
    LeftOut,
    Options,
    Row,
    find_one,
    index_files,
    missing,
    read_table,
    require_columns,
    unlabelled,
)
from pipeline.errors import DataError

META = {"BIRADS": "birads", "Histology": "histology", "Device": "device", "Plane": "plane", "Side": "side"}
FOLD_COLUMNS = ("kFold", "Fold", "fold")  # the fold files' column name; the first one present is used
CASE = re.compile(r"bus_(\d+)")


def _folds(source: Path, k: int) -> tuple[dict[str, int], str]:
    hits = sorted(source.rglob(f"{k}-fold-cv.csv"))
    if not hits:
        return {}, f"no {k}-fold-cv.csv: folds are drawn by the run (grouped by Case)"
    records = read_table(hits[0])
    col = next((c for c in FOLD_COLUMNS if records and c in records[0]), None)
    if col is None or "ID" not in records[0]:
        raise DataError(f"{hits[0]}: needs an ID column and a fold column ({' or '.join(FOLD_COLUMNS)})")
    folds = {}
    for line, r in enumerate(records, start=2):
        try:
            folds[r["ID"].strip()] = int(r[col]) - 1
        except ValueError:
            raise DataError(f"{hits[0].name} row {line}: fold {r[col]!r} is not a number") from None
    return folds, f"published folds from {hits[0].name} (1-based there, 0-based in the manifest)"


def read(source: Path, opts: Options) -> Collected:
    label_path = find_one(source, "bus_data.csv", "BUS-BRA label file")
    records = read_table(label_path)
    require_columns(records, ("ID", "Pathology"), label_path)
    found = {n: p for n, p in index_files(source, (".png",)).items() if "mask" not in n.lower()}
    by_stem = {Path(n).stem: p for n, p in found.items()}
    folds, fold_note = _folds(source, opts.folds)
    rows, left = [], []
    for rec in records:
        image_id = rec["ID"].strip()
        if image_id not in by_stem:
            left.append(missing(f"{image_id}.png", label_path.name))
            continue
        image = str(by_stem[image_id].resolve())
        label = rec["Pathology"].strip().lower()
        if not label:
            left.append(LeftOut(image, "blank Pathology"))
            continue
        case = rec.get("Case", "").strip() or (m.group(1) if (m := CASE.match(image_id)) else "")
        rows.append(Row(image=image, label=label, patient_id=case, fold=folds.get(image_id),
                        meta={out: rec.get(col, "").strip() for col, out in META.items()}))
    left += unlabelled(by_stem, {r["ID"].strip() for r in records}, label_path.name)
    return Collected(rows=tuple(rows), left_out=tuple(left), positive="malignant",
                     notes=(fold_note, "segmentation masks (Masks/, mask_*.png) are not images: not listed"))
