"""Show what the network sees for one file: the training load transforms and the eval-mode sample transforms.

    graystem preview PATH [--config chest_xray] [--set k=v ...] [--frame K] [--png OUT] [--json]

Prints the tensor's shape and statistics, what the reader did (photometric, VOI, MONOCHROME1 inversion, frame,
ultrasound crop) and the model's input normalisation. `--png OUT` writes the tensor as an 8-bit PNG with the
normalisation undone (x * std + mean, clipped to [0, 1]) so a person can check it. `--json`: one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.cliargs import add_config_arguments
from pipeline.config import load_config
from pipeline.data.transforms import load_transforms, sample_transforms
from pipeline.errors import DataError, exits_on_error
from pipeline.model.models import build_model

INFO_KEYS = ("format", "photometric", "modality", "voi_applied", "inverted", "frames", "frame", "crop", "shape")


def preview(path: str, cfg, frame: int | None = None) -> tuple[dict, np.ndarray]:
    """(summary dict, display image HxW in [0, 1]) for one file under config `cfg`."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    # the weights do not change the normalisation (it comes with the architecture), so skip loading them
    norm = build_model(cfg.model, cfg.task.num_outputs, pretrained="none").norm
    loaded = load_transforms(cfg.data)({"image": str(p), "frame": frame})
    sample = sample_transforms(cfg, norm.mean, norm.std, train=False)({"image": loaded["image"]})
    x = torch.as_tensor(sample["image"]).float()
    info = loaded["image_info"].as_dict()
    arr = x.numpy()
    summary = {
        "path": str(p), "shape": list(arr.shape),
        "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean()), "std": float(arr.std()),
        **{("source_shape" if k == "shape" else k): info.get(k) for k in INFO_KEYS},
        "normalization": norm.to_dict(),
        "image_size": cfg.data.image_size, "intensity": cfg.data.intensity, "voi": cfg.data.voi,
        "backbone": cfg.model.backbone, "stem": cfg.model.stem,
    }
    mean = np.asarray(norm.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(norm.std, dtype=np.float32).reshape(-1, 1, 1)
    display = np.clip(arr * std[: arr.shape[0]] + mean[: arr.shape[0]], 0.0, 1.0)[0]
    return summary, display


def write_png(display: np.ndarray, out: Path) -> None:
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(display * 255).astype(np.uint8), mode="L").save(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", help="DICOM, NIfTI or raster file")
    add_config_arguments(p)
    p.add_argument("--frame", type=int, help="frame / slice index (default: the config's data.frames policy)")
    p.add_argument("--png", help="write what the network sees as an 8-bit PNG here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@exits_on_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    summary, display = preview(args.path, cfg, args.frame)
    if args.png:
        write_png(display, Path(args.png))
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>14}: {round(v, 4) if isinstance(v, float) else v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
