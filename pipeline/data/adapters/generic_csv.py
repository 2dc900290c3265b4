"""Any CSV with one row per image: `--image-col`, `--label-col`, `--patient-col`, `--fold-col`, `--split-col`
name its columns, `--meta-cols` the columns kept beside them. SOURCE is the CSV; relative image paths start at
its folder. A `--split-col` value of test/testing/holdout is split=test, anything else the cross-validation pool.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.adapters.common import Collected, LeftOut, Options, Row, read_table, require_columns
from pipeline.data.manifest import patient_from_path
from pipeline.errors import DataError

TEST_WORDS = ("test", "testing", "holdout")


def _fold(text: str, base: int, where: str) -> int | None:
    t = (text or "").strip()
    if not t:
        return None
    try:
        return int(float(t)) - base
    except ValueError:
        raise DataError(f"{where}: fold {t!r} is not a number") from None


def _fold_base(records: list[dict], col: str | None) -> int:
    """Published folds may count from 1: the smallest number present becomes fold 0 (a value that is no
    number is reported with its row by _fold)."""
    values = []
    for r in records:
        try:
            values.append(int(float(r[col])))
        except (ValueError, TypeError, KeyError):
            continue
    return min(values, default=0)


def read(source: Path, opts: Options) -> Collected:
    if not source.is_file():
        raise DataError(f"{source}: the csv format takes the CSV file as SOURCE")
    records = read_table(source)
    cols = [opts.image_col, opts.label_col, *(c for c in (opts.patient_col, opts.fold_col, opts.split_col) if c),
            *opts.meta_cols]
    require_columns(records, cols, source)
    base = _fold_base(records, opts.fold_col)
    regex = re.compile(opts.patient_regex) if opts.patient_regex else None
    rows, left = [], []
    for line, rec in enumerate(records, start=2):
        path = Path((rec[opts.image_col] or "").strip())
        path = path if path.is_absolute() else source.parent / path
        label = (rec[opts.label_col] or "").strip()
        if not path.is_file():
            left.append(LeftOut(str(path), f"named in {source.name} row {line} but the file is missing"))
        elif not label:
            left.append(LeftOut(str(path.resolve()), f"blank {opts.label_col} in row {line}"))
        else:
            pid = (rec[opts.patient_col] or "").strip() if opts.patient_col else ""
            split = "test" if opts.split_col and rec[opts.split_col].strip().lower() in TEST_WORDS else "train"
            rows.append(Row(image=str(path.resolve()), label=label,
                            patient_id=pid or patient_from_path(regex, path.name), split=split,
                            fold=_fold(rec[opts.fold_col], base, f"{source.name} row {line}") if opts.fold_col else None,
                            meta={c: (rec[c] or "").strip() for c in opts.meta_cols}))
    notes = [] if opts.patient_col or regex else ["no --patient-col: no patient ids (each image its own patient)"]
    return Collected(rows=tuple(rows), left_out=tuple(left), notes=tuple(notes))
