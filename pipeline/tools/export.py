"""Export one fold model (or the fold ensemble) of a finished run as a self-contained TorchScript file.

    graystem export RUN_DIR [--fold K | --ensemble] --out model.ts

The exported module takes what the data pipeline produces before normalisation, a (B, 1, S, S) float tensor
of [0, 1] pixels (S = data.image_size of the run), and returns class probabilities (B, n_classes) in the
order of `classes` in the sidecar JSON. The model factory's normalisation is baked in, so a deployment cannot
apply timm's 3-channel ImageNet statistics by mistake. A sidecar `<out>.json` records classes, image size,
normalisation and the reader settings the images must be read with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..checkpoint import load_run
from ..errors import exits_on_error
from ..inference import build_ensemble


def export(run_dir: Path, out: Path, fold: int | None = None) -> dict:
    run = load_run(run_dir, folds=None if fold is None else [fold])
    module = build_ensemble(run)
    task, norm, size = run.task, run.normalization, run.checkpoints[0].image_size
    example = torch.rand(2, len(norm.mean), size, size)
    with torch.no_grad():
        scripted = torch.jit.trace(module, example)
    scripted.save(str(out))
    meta = {
        "classes": task.classes, "task": task.type, "positive_class": task.positive if task.type == "binary" else None,
        "input": f"(B, {len(norm.mean)}, {size}, {size}) float32 pixels in [0, 1], before normalisation",
        "image_size": size, "normalization_baked_in": norm.to_dict(), "folds": [c.fold for c in run.checkpoints],
        "backbone": run.checkpoints[0].model.backbone, "stem": run.checkpoints[0].model.stem,
        "reader": run.checkpoints[0].pixels, "threshold": run.threshold,
    }
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(meta, indent=1))
    return meta


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--fold", type=int, help="export this fold's model (default: the ensemble of all folds)")
    ap.add_argument("--out", type=Path, default=Path("model.ts"))
    args = ap.parse_args(argv)
    meta = export(args.run_dir, args.out, args.fold)
    print(f"wrote {args.out} ({len(meta['folds'])} model(s), classes {meta['classes']}) and {args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
