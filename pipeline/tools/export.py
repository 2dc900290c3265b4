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
from torch import nn

from ..config import load_config
from ..errors import ConfigError, exits_on_error
from .predict import load_fold_models


class Deployable(nn.Module):
    """[0, 1] pixels -> (x - mean) / std -> mean of the member models' probabilities, class order."""

    def __init__(self, models: list[nn.Module], mean, std, task_type: str, positive_first: bool):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.binary = task_type == "binary"
        self.multiclass = task_type == "multiclass"
        self.positive_first = positive_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        probs = []
        for m in self.models:
            logits = m(x)
            probs.append(torch.softmax(logits, 1) if self.multiclass else torch.sigmoid(logits))
        p = torch.stack(probs).mean(0)
        if self.binary:  # one logit for the positive class -> one column per class, in class order
            p = torch.cat([p, 1 - p], 1) if self.positive_first else torch.cat([1 - p, p], 1)
        return p


def export(run_dir: Path, out: Path, fold: int | None = None) -> dict:
    members = load_fold_models(run_dir)
    if fold is not None:
        members = [(m, c) for m, c in members if c["fold"] == fold]
        if not members:
            raise ConfigError(f"--fold {fold}: no fold_{fold}/best.pt in {run_dir}")
    ckpt = members[0][1]
    task = ckpt["task"]
    positive = task.get("positive_class") or task["classes"][-1]
    norm = ckpt["normalization"]
    module = Deployable([m for m, _ in members], norm["mean"], norm["std"], task["type"],
                        positive_first=task["classes"].index(positive) == 0).eval()
    size = int(ckpt["image_size"])
    example = torch.rand(2, len(norm["mean"]), size, size)
    with torch.no_grad():
        scripted = torch.jit.trace(module, example)
    scripted.save(str(out))
    cfg = load_config(str(run_dir / "config.yaml"))
    meta = {
        "classes": task["classes"], "task": task["type"], "positive_class": positive if task["type"] == "binary" else None,
        "input": f"(B, {len(norm['mean'])}, {size}, {size}) float32 pixels in [0, 1], before normalisation",
        "image_size": size, "normalization_baked_in": norm, "folds": [c["fold"] for _, c in members],
        "backbone": ckpt["model"]["backbone"], "stem": ckpt.get("stem_strategy", ckpt["model"]["stem"]),
        "reader": cfg.data.model_dump(include={"voi", "voi_index", "frames", "crop_us_region", "slice_axis",
                                               "intensity", "image_size"}),
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
