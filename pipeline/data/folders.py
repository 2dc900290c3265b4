"""A folder tree as a manifest, for the many public sets that ship as class folders instead of a CSV:

    ROOT/train/NORMAL/a.jpeg, ROOT/test/PNEUMONIA/b.jpeg        (label from the class folder, split from 'test')
    ROOT/benign/benign (1).png, ROOT/benign/benign (1)_mask.png (masks left out with data.exclude: ["*_mask*"])

Each file becomes the same record a CSV row would give: image (relative to ROOT), label (the nearest parent
folder named like a class, case-insensitively), split ('test' when a parent folder is called test, else
train: a shipped 'val' folder is development data, the folds draw their own validation patients) and no
patient id; the patient id then comes from data.patient_regex, the DICOM PatientID, or the image itself.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from pipeline.errors import DataError
from pipeline.vocab import IMAGE_SUFFIXES, TEXT_SUFFIXES


def _wanted(rel: Path, exclude: list[str]) -> bool:
    if any(part.startswith(".") for part in rel.parts):
        return False
    suffix = rel.suffix.lower()
    if suffix in TEXT_SUFFIXES or suffix not in IMAGE_SUFFIXES:
        return False
    if suffix == ".gz" and not rel.name.lower().endswith(".nii.gz"):
        return False
    text = rel.as_posix()
    return not any(fnmatch.fnmatch(text, pat) or fnmatch.fnmatch(rel.name, pat) for pat in exclude)


def folder_records(root: Path, classes: list[str], exclude: list[str], label_column: str) -> list[dict]:
    """CSV-like records for every image file below root, in sorted (reproducible) order."""
    by_name = {c.lower(): c for c in classes}
    records = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if not _wanted(rel, exclude):
            continue
        parents = [p.lower() for p in rel.parts[:-1]]
        label = next((by_name[p] for p in reversed(parents) if p in by_name), "")
        split = "test" if "test" in parents else "train"
        records.append({"image": rel.as_posix(), label_column: label, "split": split})
    if not records:
        raise DataError(f"data.manifest: no image files below the folder {root} (after data.exclude)")
    return records
