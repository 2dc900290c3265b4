"""Patient-grouped, label-stratified folds (scikit-learn's StratifiedGroupKFold) and the held-out test set.

Splitting happens on patients, never on images: every image (and every frame) of a patient is in exactly one
fold's validation set, or in the test set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .config import Config
from .errors import DataError


def _strata(rows: list[dict], task_type: str) -> np.ndarray:
    if task_type == "multilabel":
        # stratify on the set of positive labels (unknowns count as negative for stratification only)
        return np.array([
            "|".join(str(i) for i, v in enumerate(r["target"]) if v == 1.0) or "none" for r in rows
        ])
    return np.array([r["target"] for r in rows])


def _patient_test_split(rows, cfg: Config) -> set[str]:
    """Holds out ~test_fraction of patients when the manifest has no `split` column."""
    frac = cfg.cv.test_fraction
    if frac <= 0:
        return set()
    n_splits = max(2, round(1 / frac))
    y, groups = _strata(rows, cfg.task.type), np.array([r["patient_id"] for r in rows])
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.cv.seed)
    _, test_idx = next(sgkf.split(np.zeros(len(rows)), y, groups))
    return set(groups[test_idx])


def make_splits(rows: list[dict], cfg: Config, manifest_has_split: bool) -> dict:
    """Returns {'folds': [{'fold', 'train_patients', 'val_patients'}], 'test_patients': [...], ...}."""
    if not manifest_has_split:
        held = _patient_test_split(rows, cfg)
        for r in rows:
            r["split"] = "test" if r["patient_id"] in held else "train"
    test_patients = sorted({r["patient_id"] for r in rows if r["split"] == "test"})
    dev = [r for r in rows if r["split"] != "test"]
    # a patient with rows in both splits would leak: the test split wins for all of that patient's rows
    leaked = {r["patient_id"] for r in dev} & set(test_patients)
    if leaked:
        raise DataError(f"patients in both train and test splits of the manifest: {sorted(leaked)[:5]}")
    groups = np.array([r["patient_id"] for r in dev])
    y = _strata(dev, cfg.task.type)
    k = cfg.cv.folds
    n_patients = len(set(groups))
    if n_patients < k:
        raise DataError(f"cv.folds: {k} folds need at least {k} patients outside the test split, found {n_patients}")
    counts = {c: len(set(groups[y == c])) for c in np.unique(y)}
    if cfg.task.type != "multilabel" and min(counts.values()) < k:
        names = {i: n for i, n in enumerate(cfg.task.classes)}
        few = {names.get(c, c): n for c, n in counts.items() if n < k}
        raise DataError(f"cv.folds: {k} folds need at least {k} patients per class; too few: {few}")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.cv.seed)
    folds = []
    for fold, (tr, va) in enumerate(sgkf.split(np.zeros(len(dev)), y, groups)):
        folds.append({
            "fold": fold,
            "train_patients": sorted(set(groups[tr])),
            "val_patients": sorted(set(groups[va])),
        })
    return {"folds": folds, "test_patients": test_patients, "seed": cfg.cv.seed, "n_folds": k}


def fold_indices(rows: list[dict], splits: dict, fold: int) -> tuple[list[int], list[int]]:
    f = splits["folds"][fold]
    tr, va = set(f["train_patients"]), set(f["val_patients"])
    train = [i for i, r in enumerate(rows) if r["split"] != "test" and r["patient_id"] in tr]
    val = [i for i, r in enumerate(rows) if r["split"] != "test" and r["patient_id"] in va]
    return train, val


def heldout_indices(rows: list[dict]) -> list[int]:
    return [i for i, r in enumerate(rows) if r["split"] == "test"]


def save_splits(splits: dict, path: Path) -> None:
    path.write_text(json.dumps(splits, indent=1))


def load_splits(path: Path) -> dict:
    return json.loads(path.read_text())
