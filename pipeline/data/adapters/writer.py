"""Collected rows -> DIR/manifest.csv (the project's manifest format, data/README.md) and DIR/left_out.csv, and
the summary `graystem prepare` prints."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from pipeline.data.adapters.common import Collected, Row
from pipeline.errors import DataError


def _cell(v: float | None) -> str:
    return "" if v is None else str(int(v))


def columns(collected: Collected) -> list[str]:
    rows = collected.rows
    label_cols = list(collected.findings) or ["label"]
    cols = ["image", *label_cols, "patient_id", "split"]
    if any(r.fold is not None for r in rows):
        cols.append("fold")
    meta = dict.fromkeys(k for r in rows for k in r.meta)  # first-seen order, each once
    if clash := [k for k in meta if k in cols]:  # --meta-cols label, or a finding named like a metadata column
        raise DataError(f"metadata column(s) {clash} would overwrite the manifest's own columns {cols}")
    return cols + list(meta)


def _record(r: Row, collected: Collected) -> dict:
    rec = {"image": r.image, "patient_id": r.patient_id, "split": r.split,
           "fold": "" if r.fold is None else r.fold, **r.meta}
    if collected.findings:
        rec.update({f: _cell(r.findings.get(f)) for f in collected.findings})
    else:
        rec["label"] = r.label
    return rec


def write(collected: Collected, out: Path) -> tuple[Path, Path]:
    """manifest.csv and left_out.csv (always written: an empty list is news too)."""
    fields = columns(collected)  # before any file is opened: a clash leaves no half-written manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest, left = out / "manifest.csv", out / "left_out.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(_record(r, collected) for r in collected.rows)
    with left.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "reason"])
        w.writerows((x.image, x.reason) for x in collected.left_out)
    return manifest, left


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))


def summary(collected: Collected) -> list[str]:
    rows = collected.rows
    pids = {r.patient_id for r in rows if r.patient_id}
    blank = sum(not r.patient_id for r in rows)
    lines = [f"images: {len(rows)}",
             f"patients: {len(pids)}" + (f" (+{blank} images without a patient id)" if blank and pids else "")
             if pids else "patients: no patient ids (each image counts as its own patient; exact copies are "
                          "grouped at training time)"]
    splits = Counter(r.split for r in rows)
    lines.append(f"per split: {_counts(splits)}")
    if collected.findings:
        lines.append("per finding (positive / negative / unknown):")
        for f in collected.findings:
            c = Counter(r.findings.get(f) for r in rows)
            lines.append(f"  {f}: {c[1.0]} / {c[0.0]} / {c[None]}")
    else:
        for split in sorted(splits):
            lines.append(f"per class ({split}): {_counts(Counter(r.label for r in rows if r.split == split))}")
    folds = Counter(r.fold for r in rows if r.fold is not None)
    if folds:
        lines.append(f"per published fold (0-based): {_counts(folds)}")
    reasons = Counter(x.reason for x in collected.left_out)
    lines.append(f"left out: {len(collected.left_out)}" + (" (listed in left_out.csv)" if reasons else ""))
    lines += [f"  {n}  {why}" for why, n in reasons.most_common()]
    lines += [f"note: {n}" for n in collected.notes]
    return lines


def train_hint(collected: Collected, manifest: Path, config: str) -> str:
    """The command that trains on this manifest: the classes are the ones the manifest holds."""
    if collected.findings:
        classes = ", ".join(collected.findings)
        task = f"--set task.type=multilabel --set 'task.classes=[{classes}]'"
    else:
        classes = ", ".join(sorted({r.label for r in collected.rows}))
        n = len({r.label for r in collected.rows})
        kind = "binary" if n == 2 else "multiclass"
        task = f"--set task.type={kind} --set 'task.classes=[{classes}]'"
        if kind == "binary" and collected.positive:  # else the config's rule: the last class is scored
            task += f" --set 'task.positive_class={collected.positive}'"
    if not any(r.split == "test" or r.fold is not None for r in collected.rows):
        # no published test set nor folds: hold out a fifth (published folds are the whole evaluation)
        task += " --set cv.test_fraction=0.2"
    return f"graystem train --config {config} --set data.manifest={manifest} --set data.demo=null {task} --dry-run"
