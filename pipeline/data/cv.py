"""Patient-grouped, label-stratified folds (scikit-learn's StratifiedGroupKFold) and the held-out test set.

A manifest with a `fold` column (published folds, as public data sets ship them) replaces StratifiedGroupKFold:
the fold is a property of the patient (a patient in two folds is an error naming it; a patient's rows with a
blank fold follow its other rows), the distinct fold values in sorted order become folds 0..k-1, and their
number overrides cv.folds. Patients with no fold at all and no `split: test` are left out of cross-validation
with a warning. The test set is still the manifest's `split: test` rows (cv.test_fraction is not used then).

Splitting happens on patients, never on images: every image (and every frame) of a patient is in exactly one
fold's validation set, or in the test set. `Splits` (what splits.json holds) is the one owner of fold and test
membership; samples carry only the split the manifest asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.data.manifest import Sample
from pipeline.errors import DataError
from pipeline.logs import log
from pipeline.schema import Config


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


def _published_folds(samples: Sequence[Sample], cfg: Config) -> Splits:
    test = {s.patient_id for s in samples if s.split == "test"}
    leaked = test & {s.patient_id for s in samples if s.split != "test"}
    if leaked:
        raise DataError(f"patients in both train and test splits of the manifest: {sorted(leaked)[:5]}")
    fold_of: dict[str, int] = {}
    for s in samples:
        if s.fold is None:
            continue
        if s.patient_id in test:
            raise DataError(f"manifest row {s.row}: patient '{s.patient_id}' is in the test split and in fold {s.fold}; "
                            "test rows take no fold")
        if fold_of.setdefault(s.patient_id, s.fold) != s.fold:
            raise DataError(f"patient '{s.patient_id}' is in two folds of the manifest's fold column "
                            f"({fold_of[s.patient_id]} and {s.fold}, row {s.row})")
    values = sorted(set(fold_of.values()))
    if len(values) < 2:
        raise DataError(f"fold column: cross-validation needs at least 2 distinct folds, found {values}")
    if values != list(range(len(values))):
        log.info(f"fold column: folds {values} are numbered 0..{len(values) - 1} in that order")
    if len(values) != cfg.cv.folds:
        log.info(f"fold column: {len(values)} folds (the column's, not cv.folds={cfg.cv.folds})")
    unassigned = {s.patient_id for s in samples} - test - set(fold_of)
    if unassigned:
        log.warning(f"warning: {len(unassigned)} patients have a blank fold and are not in the test split; they "
                    f"are left out of cross-validation (e.g. {sorted(unassigned)[:3]})")
    index = {v: k for k, v in enumerate(values)}
    patients = sorted(fold_of)
    folds = tuple(Fold(k, tuple(p for p in patients if index[fold_of[p]] != k),
                       tuple(p for p in patients if index[fold_of[p]] == k)) for k in range(len(values)))
    return Splits(folds=folds, test_patients=tuple(sorted(test)), seed=cfg.cv.seed)


def make_splits(samples: Sequence[Sample], cfg: Config) -> Splits:
    if any(s.fold is not None for s in samples):
        return _published_folds(samples, cfg)
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
