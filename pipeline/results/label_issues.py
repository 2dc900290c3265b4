"""Suspect labels: the images whose given label the out-of-fold models most disagree with.

Confident learning (Northcutt et al., JAIR 2021) through cleanlab's maintained `find_label_issues` on the
out-of-fold probabilities (each image scored by a model that never trained on it), ranked by self-confidence (the
probability given to the image's own label, lowest first). Multi-label runs are ranked per finding (each finding
a binary problem, unknown labels left out). The list is for a person to re-read those images, not a verdict:
the models can be wrong too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.model.outputs import class_matrix

NAME = "label_issues.csv"


@dataclass(frozen=True)
class LabelIssue:
    rank: int  # 1 = most suspect (per finding in multi-label runs)
    image: str
    patient_id: str
    finding: str  # the class column judged (multi-label), '' otherwise
    given: str  # the label as given
    probs: tuple[float, ...]  # out-of-fold probability per class (task.classes order)
    self_confidence: float  # the probability of the given label


def _ranked(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return np.zeros(0, dtype=int)
    return find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")


def find_issues(task, items) -> list[LabelIssue]:
    """Label issues among out-of-fold items (dicts with image, patient_id, label, target, prob)."""
    if not items:
        return []
    probs = class_matrix(task, [it["prob"] for it in items])
    out: list[LabelIssue] = []
    if task.type != "multilabel":
        labels = np.array([task.classes.index(it["label"]) for it in items])
        pred = np.clip(probs, 1e-9, None)
        pred = pred / pred.sum(1, keepdims=True)
        for r, i in enumerate(_ranked(labels, pred), start=1):
            out.append(LabelIssue(r, items[i]["image"], items[i]["patient_id"], "", items[i]["label"],
                                  tuple(float(x) for x in probs[i]), float(probs[i, labels[i]])))
        return out
    target = np.array([it["target"] for it in items], dtype=float)
    for c, name in enumerate(task.classes):
        known = np.flatnonzero(~np.isnan(target[:, c]))
        labels = target[known, c].astype(int)
        p = np.clip(probs[known, c], 1e-9, 1 - 1e-9)
        for r, k in enumerate(_ranked(labels, np.stack([1 - p, p], 1)), start=1):
            i = known[k]
            out.append(LabelIssue(r, items[i]["image"], items[i]["patient_id"], name, str(labels[k]),
                                  tuple(float(x) for x in probs[i]), float(p[k] if labels[k] else 1 - p[k])))
    return out


def to_csv(task, issues: list[LabelIssue]) -> str:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["rank", "image", "patient_id", *(["finding"] if task.type == "multilabel" else []), "given_label",
                *(f"oof_prob_{c}" for c in task.classes), "self_confidence"])
    for x in issues:
        w.writerow([x.rank, x.image, x.patient_id, *([x.finding] if task.type == "multilabel" else []), x.given,
                    *(f"{v:.6f}" for v in x.probs), f"{x.self_confidence:.6f}"])
    return buf.getvalue()


def summary_block(task, issues: list[LabelIssue], n_items: int) -> dict:
    """summary.json's `label_issues`: how many, of how many images, and per finding for multi-label runs."""
    block = {"count": len(issues), "of": n_items, "file": NAME, "method": "cleanlab find_label_issues (oof)"}
    if task.type == "multilabel":
        block["per_finding"] = {c: sum(x.finding == c for x in issues) for c in task.classes}
    return block


def items_from_predictions(task, path: Path) -> list[dict]:
    """Out-of-fold items read back from a finished run's oof_predictions.csv (for `graystem audit --run`)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    items = []
    for r in rows:
        prob = np.array([float(r[f"prob_{c}"]) for c in task.classes])
        if task.type == "binary":
            prob = prob[[task.classes.index(task.positive)]]
        target = (tuple(float(r[f"label_{c}"]) if r[f"label_{c}"] != "" else np.nan for c in task.classes)
                  if task.type == "multilabel" else None)
        items.append({"image": r["image"], "patient_id": r["patient_id"], "label": r["label"], "target": target,
                      "prob": prob})
    return items


def write_label_issues(folder, task, issues: list[LabelIssue], n_items: int, pixels=None, show: int = 12) -> dict:
    """RUN/label_issues.csv and, when `pixels(image)` is given, label_issues.png (the top ones); returns
    summary.json's block."""
    from pipeline.results.montage import save_montage

    folder.write_text(folder.file(NAME), to_csv(task, issues))
    block = summary_block(task, issues, n_items)
    top = sorted(issues, key=lambda x: x.self_confidence)[:show]
    if pixels is not None and top:
        per_row = 6
        cells = [(pixels(x.image), f"{Path(x.image).name}\n{(x.finding + '=') if x.finding else ''}{x.given}, "
                                   f"p {x.self_confidence:.2f}") for x in top]
        save_montage(folder.file("label_issues.png"), [cells[k:k + per_row] for k in range(0, len(cells), per_row)],
                     "Suspect labels: given label and the out-of-fold probability of it")
        block["montage"] = "label_issues.png"
    return block


def markdown(summary: dict) -> list[str]:
    """report.md's lines on suspect labels ([] when the run has none computed)."""
    b = summary.get("label_issues")
    if not b:
        return []
    lines = ["", "## Suspect labels", "",
             f"{b['count']} of {b['of']} images have a label the out-of-fold models disagree with (cleanlab, "
             f"confident learning; `{b['file']}`, most suspect first). Re-read them before trusting the metrics: "
             "a wrong label costs every figure above, and some are the model's mistakes, not the label's."]
    if b.get("montage"):
        lines += ["", f"![Suspect labels]({b['montage']})"]
    return lines
