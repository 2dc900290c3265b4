"""Synthetic demo data sets (chest X-ray DICOMs, ultrasound cine DICOMs/NIfTIs) and their manifests.

Everything is drawn from numpy generators seeded by (seed, dataset, patient, image), UIDs are hashed from the
same numbers and dates are fixed, so two runs write byte-identical files. Layout and manifest format: data/README.md.

    graystem demo [--root data/demo] [--only chest_xray|ultrasound] [--force]
    python scripts/make_demo_data.py ...          (the same, from a checkout)
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

from pipeline.demo.chest import chest_specs, chest_stored, render_chest, write_chest
from pipeline.demo.ultrasound import render_us, us_specs, write_us
from pipeline.errors import ConfigError, exits_on_error

__all__ = ["DATASETS", "VERSION", "chest_specs", "chest_stored", "ensure_demo_data", "main", "make_demo",
           "render_chest", "render_us", "us_specs"]

VERSION = "2"  # bump when the generator changes so old demo folders are rewritten
DATASETS = ("chest_xray", "ultrasound")

_MAKERS = {"chest_xray": (chest_specs, write_chest), "ultrasound": (us_specs, write_us)}


def _marker(seed: int, n_scale: float) -> str:
    return f"graystem demo data version={VERSION} seed={seed} n_scale={n_scale}\n"


def make_demo(root: Path = Path("data/demo"), which=DATASETS, seed: int = 0, *, n_scale: float = 1.0,
              force: bool = False, verbose: bool = False) -> dict:
    """Write the demo data sets under root and return {name: path of its labels.csv}.

    A data set whose `.complete` marker matches (version, seed, n_scale) is left alone unless force; otherwise
    its folder is removed and rewritten, so an interrupted run is repaired. n_scale < 1 makes a smaller set
    (same formats, fewer patients) for tests."""
    root = Path(root)
    which = (which,) if isinstance(which, str) else tuple(which)
    out = {}
    for name in which:
        if name not in _MAKERS:
            raise ValueError(f"unknown demo data set {name!r}; choose from {', '.join(DATASETS)}")
        folder, manifest = root / name, root / name / "labels.csv"
        marker = folder / ".complete"
        out[name] = manifest
        if not force and marker.is_file() and marker.read_text() == _marker(seed, n_scale):
            if verbose:
                print(f"{name}: already complete in {folder}")
            continue
        t0 = time.perf_counter()
        if folder.exists():
            shutil.rmtree(folder)
        make_specs, write = _MAKERS[name]
        specs = make_specs(seed, n_scale)
        for s in specs:
            path = folder / s["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            write(s, path)
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["image", "label", "patient_id", "split"])
            for s in specs:
                w.writerow([s["file"], s["label"], s["patient_id"], s["split"]])
        marker.write_text(_marker(seed, n_scale))  # last: its presence means the folder is whole
        if verbose:
            print(f"{name}: {len(specs)} files, {len({s['patient_id'] for s in specs})} patients "
                  f"-> {manifest} ({time.perf_counter() - t0:.1f} s)")
    return out


def ensure_demo_data(cfg, log=print) -> None:
    """The built-in configs point at generated demo data: make it on first use, and again when the generator
    changed (the version marker is compared; current data of any size is left alone)."""
    from pipeline.schema import resolve_data_path

    if not cfg.data.demo:
        return
    target = resolve_data_path(cfg.data.manifest)
    folder = target.parent  # the demo manifest sits at <root>/<dataset>/labels.csv
    marker = folder / ".complete"
    if folder.exists() and not marker.is_file():
        # never rewrite a folder the generator did not make (data.demo left on while pointing at real data)
        if target.is_file():
            return
        raise ConfigError(f"data.demo: {folder} exists but holds no generated demo data; remove data.demo or the folder")
    if target.is_file() and marker.is_file() and f"version={VERSION} " in marker.read_text():
        return
    t0 = time.perf_counter()
    make_demo(folder.parent, which=(cfg.data.demo,))
    log(f"generated demo data '{cfg.data.demo}' in {folder} ({time.perf_counter() - t0:.1f}s)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/demo"))
    ap.add_argument("--only", choices=DATASETS, help="write only this data set")
    ap.add_argument("--force", action="store_true", help="rewrite even if already complete")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the patients to make (tests: 0.1)")
    return ap


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    make_demo(args.root, (args.only,) if args.only else DATASETS, args.seed, n_scale=args.scale, force=args.force,
              verbose=True)
    return 0
