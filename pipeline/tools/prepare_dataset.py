"""Manifest of a public data set in its published layout: DIR/manifest.csv, DIR/left_out.csv and a summary.

`graystem prepare FORMAT SOURCE --out DIR`: a public data set, in its published layout, as DIR/manifest.csv
(the project's manifest format) plus DIR/left_out.csv (every file left out, with the reason), and a summary.

    graystem prepare nih-cxr14 ~/data/ChestX-ray14 --out data/nih --finding Pneumonia
    graystem prepare chexpert ~/data/CheXpert-v1.0-small --out data/chexpert --uncertain zeros --view frontal
    graystem prepare busi ~/data/Dataset_BUSI_with_GT --out data/busi --classes benign,malignant
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.data.adapters import FORMATS
from pipeline.data.adapters.common import UNCERTAIN_POLICIES, VIEWS, VOTES, Collected, LeftOut, Options
from pipeline.data.adapters.writer import summary, train_hint, write
from pipeline.errors import DataError, exits_on_error

CONFIG = {"medmnist": "medmnist", "bus-bra": "busi", "busi": "busi", "image-folder": "chest_xray",
          "csv": "chest_xray"}  # the built-in config a format's hint starts from (busi: still breast B-mode PNGs); the rest: chest_xray


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="formats:\n" + "\n".join(f"  {k:<15} {v[1]}" for k, v in FORMATS.items()))
    p.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help="one of: " + ", ".join(FORMATS))
    p.add_argument("source", type=Path, metavar="SOURCE", help="the data set's folder as downloaded (csv, medmnist: the file)")
    p.add_argument("--out", type=Path, required=True, help="folder for manifest.csv and left_out.csv")
    p.add_argument("--finding", help="chest sets: a binary task, this finding vs 'No Finding' (default: "
                                     "multi-label, one column per finding)")
    p.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default="ignore",
                   help="chexpert, mimic-cxr-jpg: uncertain labels (-1) become 1, 0 or unknown (default ignore)")
    p.add_argument("--view", choices=VIEWS, default="frontal", help="chest sets with views: keep (default frontal)")
    p.add_argument("--rad-vote", choices=VOTES, default="majority", help="vindr-cxr: combine the radiologists")
    p.add_argument("--folds", type=int, choices=(5, 10), default=5, help="bus-bra: published partition to keep")
    p.add_argument("--classes", help="comma-separated classes to keep (single-label sets); the others are left out")
    p.add_argument("--patient-regex", help="image-folder, csv: patient id from the file name (group 'patient' or "
                                           r"the first group), e.g. 'person(\d+)_'")
    g = p.add_argument_group("csv format columns")
    g.add_argument("--image-col", default="image")
    g.add_argument("--label-col", default="label")
    g.add_argument("--patient-col")
    g.add_argument("--fold-col", help="published fold (values from 1 are shifted to start at 0)")
    g.add_argument("--split-col", help="test / testing / holdout rows become split=test")
    g.add_argument("--meta-cols", default="", help="comma-separated columns kept as they are")
    return p


def keep_classes(collected: Collected, classes: list[str]) -> Collected:
    """Only the rows of the listed classes; the others are left out with their class named."""
    if collected.findings:
        raise DataError("--classes: this manifest is multi-label (one column per finding); use --finding")
    if unknown := sorted(set(classes) - {r.label for r in collected.rows}):
        raise DataError(f"--classes: {unknown} not among the labels found "
                        f"({sorted({r.label for r in collected.rows})})")
    kept = tuple(r for r in collected.rows if r.label in classes)
    dropped = tuple(LeftOut(r.image, f"class '{r.label}' not in --classes") for r in collected.rows
                    if r.label not in classes)
    return replace(collected, rows=kept, left_out=collected.left_out + dropped)


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.source.exists():
        raise DataError(f"{args.source}: no such file or folder")
    if args.patient_regex:
        try:
            re.compile(args.patient_regex)
        except re.error as exc:
            raise DataError(f"--patient-regex: not a valid regular expression ({exc})") from None
    opts = Options(finding=args.finding, uncertain=args.uncertain, view=args.view, rad_vote=args.rad_vote,
                   patient_regex=args.patient_regex, image_col=args.image_col, label_col=args.label_col,
                   patient_col=args.patient_col, fold_col=args.fold_col, split_col=args.split_col,
                   meta_cols=tuple(c.strip() for c in args.meta_cols.split(",") if c.strip()),
                   folds=args.folds, out=args.out.resolve())
    adapter = importlib.import_module(f"pipeline.data.adapters.{FORMATS[args.format][0]}")
    collected = adapter.read(args.source.resolve(), opts)
    if args.classes:
        collected = keep_classes(collected, [c.strip() for c in args.classes.split(",") if c.strip()])
    if not collected.rows:
        raise DataError(f"{args.source}: no image could be given a label ({len(collected.left_out)} left out)")
    manifest, left = write(collected, args.out)
    print(f"{args.format}: {args.source} -> {manifest}")
    print("\n".join(summary(collected)))
    print(f"train with:\n  {train_hint(collected, manifest, CONFIG.get(args.format, 'chest_xray'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
