"""The MONAI bundle layout of an exported model, loadable as the Model Zoo's bundles are.

    BUNDLE/configs/metadata.json    MONAI bundle metadata (the fields the bundle specification documents)
    BUNDLE/configs/inference.json   ConfigParser config: GrayReader + the run's load transforms + the model
    BUNDLE/models/model.ts          TorchScript fold ensemble ([0, 1] pixels in, probabilities out)
    BUNDLE/docs/README.md           the model card
    BUNDLE/metadata.json, model_card.md   this project's metadata (as every export format writes)

`monai.bundle.verify_metadata` downloads the JSON schema named in metadata.json's "schema" URL before it
validates; runs never download (offline sites), so `REQUIRED_METADATA` lists the fields the specification
documents and the tests validate against those; on a machine with network access verify_metadata can be run
on configs/metadata.json as is.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.deploy.finished import FinishedRun

SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
# top-level keys the MONAI bundle specification requires in configs/metadata.json
REQUIRED_METADATA = ("version", "monai_version", "pytorch_version", "numpy_version", "optional_packages_version",
                     "task", "description", "authors", "copyright", "network_data_format", "changelog")
# keys of every network_data_format input/output entry
REQUIRED_TENSOR_FIELDS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def bundle_metadata(meta: dict) -> dict:
    """configs/metadata.json from the export metadata (pipeline.deploy.modelcard.export_metadata)."""
    import monai
    import numpy
    import torch

    task, size = meta["task"], meta["preprocessing"]["image_size"]
    channels = meta["input"]["shape"][1]
    test = meta["metrics"].get("test") or {}
    return {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by graystem from a finished run"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {k: v for k, v in meta["packages"].items()
                                      if k in ("pydicom", "nibabel", "pillow", "timm", "graystem")},
        "required_packages_version": {"graystem": meta["packages"].get("graystem", "0.1.0")},
        "name": f"graystem {task['name']} classifier",
        "task": f"{task['type']} classification: {', '.join(task['classes'])}",
        "description": (f"{meta['model']['backbone']} ({meta['model']['stem']} 1-channel stem), mean of "
                        f"{len(meta['model']['folds'])} fold model(s); input {channels}x{size}x{size} pixels in "
                        "[0, 1] read with pipeline.io.monai_readers.GrayReader; output class probabilities."),
        "authors": "graystem export",
        "copyright": "see the training data's terms; model weights derived from ImageNet-pretrained weights",
        "intended_use": "research only; not for clinical decisions",
        "data_type": "dicom, nifti or png/jpeg/tiff",
        "image_classes": f"{channels}-channel grey-scale image, values in [0, 1]",
        "label_classes": {str(i): c for i, c in enumerate(task["classes"])},
        "pred_classes": {str(i): c for i, c in enumerate(task["classes"])},
        "eval_metrics": {k: v for k, v in test.items() if v is not None},
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "XR/US", "num_channels": channels,
                "spatial_shape": [size, size], "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": False, "channel_def": {str(i): "image" for i in range(channels)}}},
            "outputs": {"pred": {
                "type": "probabilities", "format": "classes", "num_channels": len(task["classes"]),
                "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1], "is_onehot": False,
                "channel_def": {str(i): c for i, c in enumerate(task["classes"])}}},
        },
    }


def inference_config(run: FinishedRun, meta: dict) -> dict:
    """configs/inference.json: `python -m monai.bundle run --config_file configs/inference.json --image X`
    prints the probabilities; ConfigParser users read `probabilities` (or `preprocessing` and `network`)."""
    pre = meta["preprocessing"]
    size, reader = pre["image_size"], pre["reader"]
    # frames: all | nonzero reads every frame onto the channel axis; each is scaled on its own (channel_wise), as
    # training scaled each frame sample, scored as a batch and averaged, as predict aggregates a file's frames
    if pre["intensity"] == "percentile":
        scale = {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
                 "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True}
    else:
        scale = {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": True}
    return {
        "imports": ["$import torch", "$import pipeline.io.monai_readers"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "image": "",
        "reader": {"_target_": "pipeline.io.monai_readers.GrayReader", "voi": reader["voi"],
                   "voi_index": reader["voi_index"],
                   # the run's frame policy: `all` / `nonzero` stack every frame (scored and averaged below)
                   "frame": run.deployment.frames,
                   "crop_us_region": reader["crop_us_region"], "slice_axis": reader["slice_axis"]},
        "network": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location=@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "@reader", "image_only": True,
             "ensure_channel_first": True},
            scale,
            {"_target_": "Resized", "keys": "image", "spatial_size": size, "size_mode": "longest",
             "mode": "bilinear", "anti_aliasing": True},
            {"_target_": "SpatialPadd", "keys": "image", "spatial_size": [size, size], "mode": "constant",
             "value": 0.0},
            {"_target_": "EnsureTyped", "keys": "image", "data_type": "tensor", "dtype": "$torch.float32",
             "track_meta": False},
        ]},
        "classes": list(meta["task"]["classes"]),
        "probabilities": "$@network(@preprocessing({'image': @image})['image'][:, None].to(@device)).mean(0).detach()",
        "run": ["$print(dict(zip(@classes, @probabilities.tolist())))"],
    }


def write_bundle(run: FinishedRun, out_dir: Path, meta: dict, card: str) -> list[Path]:
    """The configs and docs; the caller writes models/model.ts and the project metadata."""
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    (out_dir / "docs").mkdir(parents=True, exist_ok=True)
    files = {out_dir / "configs" / "metadata.json": json.dumps(bundle_metadata(meta), indent=1),
             out_dir / "configs" / "inference.json": json.dumps(inference_config(run, meta), indent=1),
             out_dir / "docs" / "README.md": card + "\n## Using the bundle\n\n```bash\n"
             "python -m monai.bundle run --config_file configs/inference.json --image FILE.dcm\n```\n\n"
             "Needs this project installed (`pipeline.io.monai_readers.GrayReader` reads the file as training "
             "did). For cine runs trained on every frame (`frames: all`), every frame is scored and the "
             "probabilities averaged, as predict does.\n"}
    for path, text in files.items():
        path.write_text(text)
    return list(files)
