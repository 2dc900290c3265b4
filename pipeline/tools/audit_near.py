"""The audit's near-duplicate files: near_duplicates.csv (group, image, patient, label, distance to the group's
first image) and near_duplicates.png (the closest groups side by side with their distances), for a person to
confirm at a glance. The groups are the training check's (pipeline.data.near_check) on the same decoded pixels."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.data.datasets import decode_samples
from pipeline.data.near_check import decoded_groups
from pipeline.results.montage import save_montage


def near_duplicate_rows(cfg, samples) -> tuple[list[dict], object]:
    """One row per image in a near-copy group, groups in order of their closest member; and the decoded set."""
    decoded = decode_samples(cfg, samples)
    groups = sorted(decoded_groups(cfg, decoded), key=lambda g: (min(g.distance[1:]), g.members[0]))
    rows = []
    for n, g in enumerate(groups, start=1):
        for k, d in zip(g.members, g.distance, strict=True):
            s = decoded.samples[k]
            rows.append({"group": n, "image": s.image_text, "patient": s.patient_id if s.patient_known else "",
                         "label": s.label, "distance": d, "index": k})
    return rows, decoded


def write_near_duplicates(rows: list[dict], decoded, out: Path, show: int = 12) -> None:
    with (out / "near_duplicates.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["group", "image", "patient", "label", "distance"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    shown = list(groups.values())[:show]
    if not shown or decoded.images is None:
        return
    save_montage(out / "near_duplicates.png",
                 [[(decoded.images.get(r["index"]), f"{Path(r['image']).name}\n{r['label']}, {r['distance']} bits")
                   for r in g] for g in shown],
                 "Near copies (distance to the group's first image, bits of 256)")
