"""Score new images with the fold models of a finished run (the fold ensemble, as for the test set).

    graystem predict RUN_DIR IMAGE [IMAGE ...] [--out predictions.csv]
    graystem predict RUN_DIR --manifest new.csv [--out predictions.csv]

Each image is read with the run's reader options and resized as in training, and normalised with the
statistics stored in the checkpoint (the model factory's, never timm's 3-channel defaults).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from ..config import ModelConfig, load_config
from ..engine import probabilities
from ..errors import ConfigError, ImageReadError, exits_on_error
from ..manifest import reader_options
from ..models import build_model
from ..transforms import load_transforms, normalize_transform


def load_fold_models(run_dir: Path):
    paths = sorted(run_dir.glob("fold_*/best.pt"))
    if not paths:
        raise ConfigError(f"{run_dir}: no fold_K/best.pt checkpoints (not a finished run folder)")
    models = []
    for p in paths:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        n_out = 1 if ckpt["task"]["type"] == "binary" else len(ckpt["task"]["classes"])
        model, _ = build_model(ModelConfig(**ckpt["model"]), n_out, pretrained="none")
        model.load_state_dict(ckpt["state_dict"])
        models.append((model.eval(), ckpt))
    return models


@torch.no_grad()
def predict_files(run_dir: Path, images: list[tuple[str, int | None]], on_error: str = "raise"):
    cfg = load_config(str(run_dir / "config.yaml"))
    models = load_fold_models(run_dir)
    ckpt = models[0][1]
    norm = normalize_transform(ckpt["normalization"]["mean"], ckpt["normalization"]["std"])
    chain = load_transforms(cfg, reader_options(cfg))
    classes, task_type = ckpt["task"]["classes"], ckpt["task"]["type"]
    out, skipped = [], []
    for image, frame in images:
        try:
            x = norm(chain({"image": image, "frame": frame}))["image"]
        except ImageReadError as exc:
            if on_error != "skip":
                raise
            skipped.append({"image": image, "reason": exc.reason})
            continue
        x = torch.as_tensor(x)[None]
        probs = torch.stack([probabilities(task_type, m(x))[0] for m, _ in models]).mean(0)
        if task_type == "binary":  # the model scores the positive class
            positive = ckpt["task"].get("positive_class") or classes[-1]
            probs = torch.stack([probs if c == positive else 1 - probs for c in classes])
        out.append({"image": image, "frame": "" if frame is None else frame,
                    **{f"prob_{c}": round(float(v), 6) for c, v in zip(classes, probs, strict=True)}})
    return out, skipped, classes


@exits_on_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("images", nargs="*")
    ap.add_argument("--manifest", type=Path, help="CSV with an 'image' column (and optional 'frame')")
    ap.add_argument("--out", type=Path, help="write a CSV here (default: print JSON lines)")
    ap.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    args = ap.parse_args(argv)
    items = [(str(Path(p).resolve()), None) for p in args.images]
    if args.manifest:
        if not args.manifest.is_file():
            raise ConfigError(f"--manifest {args.manifest}: file not found")
        with args.manifest.open(newline="", encoding="utf-8-sig") as fh:
            for line, rec in enumerate(csv.DictReader(fh), start=2):
                if not rec.get("image"):
                    raise ConfigError(f"{args.manifest.name} row {line}: empty 'image'")
                path = Path(rec["image"])
                path = path if path.is_absolute() else args.manifest.parent / path
                frame = rec.get("frame") or None
                items.append((str(path), int(frame) if frame else None))
    if not items:
        raise ConfigError("no images given (pass paths or --manifest)")
    rows, skipped, classes = predict_files(args.run_dir, items, args.on_error)
    if args.out:
        with args.out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["image", "frame"] + [f"prob_{c}" for c in classes])
            w.writeheader()
            w.writerows(rows)
    else:
        for r in rows:
            print(json.dumps(r))
    for s in skipped:
        print(f"skipped: {s['image']}: {s['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
