"""Typed records that cross modules: a fold's scores and result (fold_K/result.json) and the run's summary
(summary.json). Each has `to_json` / `from_json`, so the files keep their documented shape."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Probabilities of some samples, keyed by sample index (the row order of the decoded samples)."""

    indices: tuple[int, ...]
    probs: tuple  # per sample: p(positive) for binary tasks, a tuple of class probabilities otherwise
    n_models: int = 1  # models averaged into these probabilities (a fold ensemble, a seed ensemble)

    def to_json(self) -> dict:
        return {"indices": list(self.indices), "probs": [list(p) if isinstance(p, tuple) else p for p in self.probs],
                "n_models": self.n_models}

    @classmethod
    def from_json(cls, d: dict | None) -> Scores | None:
        if d is None:
            return None
        return cls.of(d["indices"], d["probs"], int(d.get("n_models", 1)))

    @classmethod
    def of(cls, indices, probs, n_models: int = 1) -> Scores:
        rows = np.asarray(probs, dtype=float)
        plain = tuple(float(p) for p in rows) if rows.ndim == 1 else tuple(tuple(map(float, p)) for p in rows)
        return cls(tuple(int(i) for i in indices), plain, n_models)

    @staticmethod
    def mean_by_index(parts: list[Scores], *, complete: bool = False) -> Scores:
        """The mean probability per sample index over several models' scores (a fold ensemble on the test set,
        a seed ensemble of one fold), matched by index, never by position. `complete`: every part must have
        scored every sample (the fold models of a test set)."""
        by_index: dict[int, list] = {}
        for part in parts:
            for i, p in zip(part.indices, part.probs, strict=True):
                by_index.setdefault(i, []).append(p)
        if complete and any(len(v) != len(parts) for v in by_index.values()):
            raise ValueError("fold models scored different test samples")
        idx = sorted(by_index)
        return Scores.of(idx, [np.mean(by_index[i], axis=0) for i in idx], sum(p.n_models for p in parts))


@dataclass(frozen=True)
class FoldResult:
    """What one trained fold hands to the report: its best epoch and the scores of its validation (and test)
    samples by the best weights. `best_epoch`/`stage` are lists for a seed ensemble (one per seed)."""

    fold: int
    best_epoch: int | list | None
    stage: str | list | None
    val: Scores
    test: Scores | None = None
    stem_strategy: str | None = None
    normalization: dict | None = None
    training_threshold: float | None = None
    metrics_at_training_threshold: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    seconds: float | None = None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["val"] = self.val.to_json()
        d["test"] = self.test.to_json() if self.test is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> FoldResult:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["val"], kw["test"] = Scores.from_json(d["val"]), Scores.from_json(d.get("test"))
        return cls(**kw)


@dataclass(frozen=True)
class Summary:
    """summary.json. Metric blocks (`mean`, `oof`, `test`, ...) are the metric dicts of results.metrics;
    blocks that a feature adds (`seeds`, `calibration`, `subgroups`, ...) are None when it did not run and are
    then left out of the file."""

    task: str
    type: str
    classes: list
    positive_class: str | None
    threshold: float
    unit: str
    folds: list
    mean: dict
    std: dict
    oof: dict
    test: dict | None
    operating_points: list
    n_samples: int
    n_patients: int
    n_skipped: int
    patient_source: str
    model: dict
    provenance: dict
    seeds: list | None = None
    seeds_mean: dict | None = None
    seeds_sd: dict | None = None
    precision: dict | None = None
    data_checks: dict | None = None
    calibration: dict | None = None
    subgroups: dict | None = None
    decision_curve: dict | None = None
    conformal: dict | None = None
    label_issues: dict | None = None
    plan: dict | None = None

    _OPTIONAL = ("seeds", "seeds_mean", "seeds_sd", "precision", "data_checks", "calibration", "subgroups",
                 "decision_curve", "conformal", "label_issues", "plan")

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in self._OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, d: dict) -> Summary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def with_(self, **changes) -> Summary:
        return replace(self, **changes)
