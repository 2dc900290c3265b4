"""Patient-grouped, label-stratified folds (scikit-learn's StratifiedGroupKFold) and the held-out test set.

Splitting happens on patients, never on images: every image (and every frame) of a patient is in exactly one
fold's validation set, or in the test set. `Splits` (what splits.json holds) is the one owner of fold and test
membership; samples carry only the split the manifest asked for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from .config import Config
from .errors import DataError
from .manifest import Sample


@dataclass(frozen=True)
class Fold:
    fold: int
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    folds: tuple[Fold, ...]
    test_patients: tuple[str, ...]
    seed: int

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def fold_indices(self, samples: Sequence[Sample], fold: int) -> tuple[list[int], list[int]]:
        f = self.folds[fold]
        tr, va = set(f.train_patients), set(f.val_patients)
        train = [i for i, s in enumerate(samples) if s.patient_id in tr]
        val = [i for i, s in enumerate(samples) if s.patient_id in va]
        return train, val

    def test_indices(self, samples: Sequence[Sample]) -> list[int]:
        test = set(self.test_patients)
        return [i for i, s in enumerate(samples) if s.patient_id in test]

    def fold_of(self) -> dict[str, int]:
        """patient -> the fold whose validation set holds it."""
        return {p: f.fold for f in self.folds for p in f.val_patients}

    def to_json(self) -> dict:
        return {"folds": [{"fold": f.fold, "train_patients": list(f.train_patients),
                           "val_patients": list(f.val_patients)} for f in self.folds],
                "test_patients": list(self.test_patients), "seed": self.seed, "n_folds": self.n_folds}

    @classmethod
    def from_json(cls, d: dict) -> Splits:
        return cls(folds=tuple(Fold(f["fold"], tuple(f["train_patients"]), tuple(f["val_patients"]))
                               for f in d["folds"]),
                   test_patients=tuple(d["test_patients"]), seed=d["seed"])


def _strata(samples: Sequence[Sample], task_type: str) -> np.ndarray:
    if task_type == "multilabel":
        # stratify on the set of positive labels (unknowns count as negative for stratification only)
        return np.array([
            "|".join(str(i) for i, v in enumerate(s.target) if v == 1.0) or "none" for s in samples
        ])
    return np.array([s.target for s in samples])


def _test_patients(samples: Sequence[Sample], cfg: Config) -> set[str]:
    """The manifest's `split: test` patients; when it names none, ~cv.test_fraction of the patients."""
    if any(s.split == "test" for s in samples):
        test = {s.patient_id for s in samples if s.split == "test"}
        leaked = test & {s.patient_id for s in samples if s.split != "test"}
        if leaked:
            raise DataError(f"patients in both train and test splits of the manifest: {sorted(leaked)[:5]}")
        return test
    frac = cfg.cv.test_fraction
    if frac <= 0:
        return set()
    n_splits = max(2, round(1 / frac))
    y, groups = _strata(samples, cfg.task.type), np.array([s.patient_id for s in samples])
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=cfg.cv.seed)
    _, test_idx = next(sgkf.split(np.zeros(len(samples)), y, groups))
    return set(groups[test_idx])


def make_splits(samples: Sequence[Sample], cfg: Config) -> Splits:
    test_patients = _test_patients(samples, cfg)
    dev = [s for s in samples if s.patient_id not in test_patients]
    groups = np.array([s.patient_id for s in dev])
    y = _strata(dev, cfg.task.type)
    k = cfg.cv.folds
    n_patients = len(set(groups))
    if n_patients < k:
        raise DataError(f"cv.folds: {k} folds need at least {k} patients outside the test split, found {n_patients}")
    counts = {c: len(set(groups[y == c])) for c in np.unique(y)}
    if cfg.task.type != "multilabel" and min(counts.values()) < k:
        names = dict(enumerate(cfg.task.classes))
        few = {names.get(c, c): n for c, n in counts.items() if n < k}
        raise DataError(f"cv.folds: {k} folds need at least {k} patients per class; too few: {few}")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=cfg.cv.seed)
    folds = tuple(Fold(fold, tuple(sorted(set(groups[tr]))), tuple(sorted(set(groups[va]))))
                  for fold, (tr, va) in enumerate(sgkf.split(np.zeros(len(dev)), y, groups)))
    return Splits(folds=folds, test_patients=tuple(sorted(test_patients)), seed=cfg.cv.seed)


def save_splits(splits: Splits, path: Path) -> None:
    path.write_text(json.dumps(splits.to_json(), indent=1))


def load_splits(path: Path) -> Splits:
    return Splits.from_json(json.loads(path.read_text()))
