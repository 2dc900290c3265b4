"""summary.json's `data_checks` block and its report.md section: images the run grouped with a copy (exact or near,
pipeline.data.checks / near_check) and manifest columns that track the label (pipeline.data.shortcuts)."""

from __future__ import annotations

from pipeline.data.shortcuts import shortcut_table


def data_checks_block(cfg, prep) -> dict:
    before = {(s.row, s.frame): s.patient_id for s in prep.manifest.samples}
    moved = [s for s in prep.decoded.samples if before.get((s.row, s.frame), s.patient_id) != s.patient_id]
    flagged = [s for s in shortcut_table(prep.decoded.samples) if s.flagged]
    return {"near_duplicates": cfg.data.near_duplicates, "near_duplicate_bits": cfg.data.near_duplicate_bits,
            "images_grouped_with_a_copy": len(moved), "copy_groups": len({s.patient_id for s in moved}),
            "shortcuts": [s.line for s in flagged]}


def markdown(summary: dict) -> list[str]:
    b = summary.get("data_checks")
    if not b:
        return []
    grouped = (f"{b['images_grouped_with_a_copy']} images were grouped with an exact or near copy of another image "
               f"({b['copy_groups']} groups), so each copy sits in its original's fold: copies on both sides of a "
               "split would let a model be scored on images it trained on.")
    if b["near_duplicates"] != "group":
        grouped = (f"Near copies were not grouped (data.near_duplicates: {b['near_duplicates']}); "
                   f"{b['images_grouped_with_a_copy']} images were grouped with an exact copy.")
    lines = ["", "## Data checks", "", grouped]
    if b["shortcuts"]:
        lines += ["", "Manifest columns that track the label (a model can learn them instead of the finding; break "
                      "the results down by them, the prediction files carry the columns):", ""]
        lines += [f"- **SHORTCUT** {line}" for line in b["shortcuts"]]
    return lines
