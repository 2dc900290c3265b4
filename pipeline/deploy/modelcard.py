"""What travels with an exported model: metadata.json (machine-readable) and model_card.md (for people).

Both are built from the run folder only (checkpoints, config.yaml, summary.json, the prediction CSVs' label
counts), never from patient identifiers or file names, so they can leave the site with the model.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from pipeline.deploy.finished import FinishedRun
from pipeline.results.provenance import package_versions
from pipeline.runfolder import RunFolder
from pipeline.vocab import LUMA_REC601, METRICS

# what an exported graph was made with (installed ones only)
EXPORT_PACKAGES = {name: name for name in ("graystem", "torch", "timm", "monai", "numpy", "pydicom", "nibabel",
                                           "pillow", "onnx", "onnxscript", "onnxruntime")}


def _label_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return dict(sorted(Counter(r["label"] for r in csv.DictReader(fh)).items()))


def preprocessing(run: FinishedRun, input_kind: str = "gray") -> dict:
    """The steps between a file and the model's input tensor (pipeline.data.transforms.load_transforms)."""
    data = run.deployment.data
    px = data.pixel_settings()
    size = int(px["image_size"])
    scale = ("percentile 0.5-99.5 -> [0, 1], clipped" if px.get("intensity") == "percentile"
             else "min-max -> [0, 1]")
    steps = ["read one grey 2-D image with the reader options below (pipeline.io.read_gray, or "
             "LoadImage(reader=pipeline.io.monai_readers.GrayReader(**reader)))", f"intensity: {scale}",
             f"resize the longest side to {size} px (bilinear, anti-aliased), keeping the aspect ratio",
             f"pad to {size}x{size} with 0, symmetrically (MONAI SpatialPad)",
             "float32 tensor (B, 1, S, S); the model normalises inside the graph"]
    if input_kind == "rgb":
        steps[-1] = (f"float32 tensor (B, 3, S, S) RGB in [0, 1]; the stem weights its channels with Rec. 601 "
                     f"{list(LUMA_REC601)} (the luminance the 1-channel model was trained on)")
    reader = asdict(run.deployment.reader_options())  # GrayReader's own arguments
    return {"image_size": size, "intensity": px.get("intensity"), "steps": steps, "reader": reader,
            "pixels": px}


def export_metadata(run: FinishedRun, *, fmt: str, input_kind: str, files: dict[str, str]) -> dict:
    summary = RunFolder.read_json(run.folder.summary, {})
    task, ck = run.task, run.checkpoints[0]
    size = run.deployment.image_size
    channels = 3 if input_kind == "rgb" else 1
    test = summary.get("test") or {}
    return {
        "format": fmt, "files": files,
        "input": {"name": "image", "shape": ["batch", channels, size, size], "dtype": "float32",
                  "value_range": [0.0, 1.0], "channels": "RGB" if channels == 3 else "grey",
                  "normalization_in_graph": run.normalization.to_dict()},
        "output": {"name": "probabilities", "shape": ["batch", len(task.classes)], "dtype": "float32",
                   "meaning": "per-class probability, mean of the fold models"
                              + (" (each model's logits divided by `temperature`)" if run.deployment.temperature
                                 is not None else ""),
                   "columns": list(task.classes)},
        "preprocessing": preprocessing(run, input_kind),
        "task": {"name": task.name, "type": task.type, "classes": list(task.classes),
                 "positive_class": task.positive if task.type == "binary" else None},
        "threshold": run.threshold,
        "temperature": run.deployment.temperature,
        "precision": run.deployment.precision,
        "model": {"backbone": ck.model.backbone, "pretrained": ck.model.pretrained,
                  "stem": run.deployment.model.stem,
                  "folds": [c.fold for c in run.checkpoints], "ensemble": len(run.checkpoints) > 1,
                  "best_epochs": {c.fold: c.best_epoch for c in run.checkpoints}},
        "metrics": {
            "test": {k: test.get(k) for k in METRICS if k in test} or None,
            "test_ci95_patient_bootstrap": test.get("ci95"),
            "test_n": test.get("n"), "test_n_positive": test.get("n_positive"),
            "cv_mean": summary.get("mean"), "cv_std": summary.get("std"),
        },
        "training_data": {
            "n_samples": summary.get("n_samples"), "n_patients": summary.get("n_patients"),
            "n_skipped": summary.get("n_skipped"), "unit": summary.get("unit"),
            "patient_source": summary.get("patient_source"), "folds": len(summary.get("folds", [])) or None,
            "labels_development": _label_counts(run.folder.oof_predictions),
            "labels_test": _label_counts(run.folder.test_predictions),
        },
        "packages": package_versions(EXPORT_PACKAGES, missing=False),
    }


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def model_card(meta: dict) -> str:
    task, model, m, data = meta["task"], meta["model"], meta["metrics"], meta["training_data"]
    test, ci = m.get("test") or {}, m.get("test_ci95_patient_bootstrap") or {}
    cv_mean, cv_std = m.get("cv_mean") or {}, m.get("cv_std") or {}
    pre = meta["preprocessing"]
    lines = [
        f"# Model card: {task['name']} ({model['backbone']}, {len(model['folds'])}-model fold ensemble)"
        if model["ensemble"] else f"# Model card: {task['name']} ({model['backbone']}, fold {model['folds'][0]})",
        "",
        "Generated by `graystem export` from the run folder; numbers are copied from its `summary.json`.",
        "",
        "## Intended use",
        "",
        f"Research use: {task['type']} classification of grey-scale medical images into "
        f"{', '.join(task['classes'])}" + (f" (positive class: {task['positive_class']})"
                                           if task.get("positive_class") else "") + ". "
        "Not a medical device; not validated for clinical decisions. The output is a probability per class; "
        f"the run's operating point is {meta['threshold']:.3f} on p({task.get('positive_class') or 'class'}).",
        "",
        "## Model",
        "",
        f"- backbone `{model['backbone']}` ({model['pretrained']} weights), 1-channel stem `{model['stem']}`",
        f"- folds {model['folds']}; the exported model averages their probabilities",
        f"- input {meta['input']['shape']} float32 in [0, 1] ({meta['input']['channels']}); "
        f"normalisation {meta['input']['normalization_in_graph']} is inside the graph",
        f"- format `{meta['format']}`: {', '.join(meta['files'].values())}",
        "",
        "## Data",
        "",
        f"- {data.get('n_samples')} samples from {data.get('n_patients')} patients (patient ids from "
        f"{data.get('patient_source')}); {data.get('n_skipped')} inputs skipped; unit: {data.get('unit')}",
        f"- development labels (cross-validation): {data.get('labels_development')}",
        f"- held-out test labels: {data.get('labels_test')}",
        "",
        "## Metrics",
        "",
        f"Held-out test set, fold ensemble (n = {m.get('test_n')}), with 95% patient-bootstrap intervals; "
        f"cross-validation mean ± sd over folds.",
        "",
        "| metric | test | 95% CI | CV mean ± sd |",
        "|---|---|---|---|",
    ]
    for k in METRICS:
        c = ci.get(k)
        lines.append(f"| {k} | {_f(test.get(k))} | {f'{c[0]:.3f} – {c[1]:.3f}' if c else ''} | "
                     f"{_f(cv_mean.get(k))} ± {_f(cv_std.get(k))} |")
    lines += [
        "",
        "## Calibration",
        "",
        f"Test Brier score {_f(test.get('brier'))}, expected calibration error (ECE) {_f(test.get('ece'))}. "
        "Probabilities are the fold models' mean and were not recalibrated; check calibration on local data "
        "before using a threshold other than the run's.",
        "",
        "## Limitations",
        "",
        "- Trained and tested on the data described above only; performance on other scanners, sites, "
        "populations, projections or post-processing is unknown until measured.",
        "- Confidence intervals are wide for small test sets; a single held-out split is not external validation.",
        "- Shortcuts (burned-in markers, text, tubes, site-specific processing) can drive predictions: inspect "
        "Grad-CAM maps (`graystem predict RUN --cam DIR`, the run's report) before trusting the model.",
        "- Input must be read exactly as in training (reader options below); other windowing, inversion or "
        "resizing changes the outputs.",
        "",
        "## Preprocessing",
        "",
        *[f"{i + 1}. {s}" for i, s in enumerate(pre["steps"])],
        "",
        f"Reader options: `{json.dumps(pre['reader'])}`.",
        "",
        "## How to reproduce",
        "",
        "```bash",
        "pip install -e '.[export]'   # this project, with the export extra",
        "graystem train --config <the run's config.yaml>   # writes the run folder",
        f"graystem export RUN_DIR --format {meta['format']}"
        + ("" if model["ensemble"] else f" --fold {model['folds'][0]}")
        + (" --input rgb" if meta["input"]["channels"] == "RGB" else ""),
        "```",
        "",
        f"Package versions at export: {', '.join(f'{k} {v}' for k, v in meta['packages'].items())}.",
        "",
    ]
    return "\n".join(lines)


def write_metadata_and_card(out_dir: Path, meta: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path, card_path = out_dir / "metadata.json", out_dir / "model_card.md"
    meta_path.write_text(json.dumps(meta, indent=1, default=str))
    card_path.write_text(model_card(meta))
    return meta_path, card_path
