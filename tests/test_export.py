"""Export parity: ONNX (onnxruntime) and torch.export outputs equal the PyTorch EnsembleModule; the MONAI bundle
equals predict on a DICOM; the RGB-input export equals the 1-channel model on Rec. 601 luminance."""

import csv
import json

import numpy as np
import pytest
import torch

from pipeline.deploy.finished import load_run
from pipeline.tools.export import example_input, export, export_module, rgb_stem
from pipeline.tools.export import main as export_main
from pipeline.tools.predict import predict_files
from pipeline.vocab import LUMA_REC601


def _reference(run_dir, fold, x):
    module = export_module(load_run(run_dir, folds=None if fold is None else [fold]))
    with torch.no_grad():
        return module(x)


def _predicts(run, x):
    """What predict / evaluate compute: the calibrated fold ensemble (inference.build_ensemble)."""
    from pipeline.deploy.inference import build_ensemble

    with torch.no_grad():
        return build_ensemble(run)(x).numpy()


@pytest.mark.parametrize("fold", [0, None], ids=["fold0", "ensemble"])
def test_onnx_matches_pytorch(smoke_run, tmp_path, fold):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install -e '.[export]')")
    meta = export(smoke_run, tmp_path, fold, "onnx", check=False, say=lambda *a, **k: None)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    run = load_run(smoke_run)
    for b in (1, 4):
        x = example_input(run, "gray", b)
        got = sess.run(None, {"image": x.numpy()})[0]
        diff = np.abs(got - _reference(smoke_run, fold, x).numpy()).max()
        print(f"onnx {'ensemble' if fold is None else 'fold 0'} batch {b}: max abs diff {diff:.2e}")
        assert got.shape == (b, 2) and diff < 1e-4
        if fold is None:  # the calibrated probabilities predict's module returns
            assert np.abs(got - _predicts(run, x)).max() < 1e-5
    assert meta["model"]["folds"] == ([0, 1] if fold is None else [0])
    assert meta["temperature"] == run.deployment.temperature and meta["temperature"] not in (None, [1.0])


@pytest.mark.parametrize("fold", [0, None], ids=["fold0", "ensemble"])
def test_exported_program_matches_pytorch(smoke_run, tmp_path, fold):
    export(smoke_run, tmp_path, fold, "exported-program", check=False, say=lambda *a, **k: None)
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    run = load_run(smoke_run)
    for b in (1, 4):
        x = example_input(run, "gray", b)
        with torch.no_grad():
            diff = float((loaded(x) - _reference(smoke_run, fold, x)).abs().max())
        print(f"exported-program {'ensemble' if fold is None else 'fold 0'} batch {b}: max abs diff {diff:.2e}")
        assert diff < 1e-4
        if fold is None:
            with torch.no_grad():
                assert np.abs(loaded(x).numpy() - _predicts(run, x)).max() < 1e-5


def test_rgb_input_equals_gray_model_on_luminance(smoke_run, tmp_path):
    run = load_run(smoke_run)
    rgb = example_input(run, "rgb", 4)
    luma = (rgb * torch.tensor(LUMA_REC601).view(1, 3, 1, 1)).sum(1, keepdim=True)
    export(smoke_run, tmp_path, None, "exported-program", input_kind="rgb", check=False, say=lambda *a, **k: None)
    loaded = torch.export.load(str(tmp_path / "model.pt2")).module()
    with torch.no_grad():
        diff = float((loaded(rgb) - _reference(smoke_run, None, luma)).abs().max())
    print(f"rgb export vs 1-channel model on luminance: max abs diff {diff:.2e}")
    assert diff < 1e-4
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["input"]["shape"][1] == 3


def test_rgb_stem_with_the_fold_stem():
    """The exact fold stem (FoldedStem) keeps its input-independent correction when its conv takes RGB."""
    from pipeline.config import ModelConfig
    from pipeline.model.models import build_model

    torch.manual_seed(0)
    built = build_model(ModelConfig(backbone="resnet18", pretrained="none", stem="fold"), 1)
    model = built.model.eval()
    rgb = torch.rand(2, 3, 48, 48)
    luma = (rgb * torch.tensor(LUMA_REC601).view(1, 3, 1, 1)).sum(1, keepdim=True)
    m, s = built.norm.mean[0], built.norm.std[0]
    with torch.no_grad():
        diff = float((rgb_stem(model)((rgb - m) / s) - model((luma - m) / s)).abs().max())
    assert diff < 1e-4


def test_monai_bundle_equals_predict_on_a_dicom(smoke_run, small_chest, tmp_path):
    from monai.bundle import ConfigParser

    from pipeline.deploy.bundle import REQUIRED_METADATA, REQUIRED_TENSOR_FIELDS

    bundle = tmp_path / "bundle"
    assert export_main([str(smoke_run), "--format", "monai-bundle", "--out", str(bundle)]) == 0
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.ts", "docs/README.md",
                 "metadata.json", "model_card.md"):
        assert (bundle / name).is_file(), name
    # the bundle specification's required metadata fields (verify_metadata itself downloads its schema)
    import jsonschema

    tensor = {"type": "object", "required": list(REQUIRED_TENSOR_FIELDS)}
    schema = {"type": "object", "required": list(REQUIRED_METADATA), "properties": {
        "network_data_format": {"type": "object", "required": ["inputs", "outputs"], "properties": {
            "inputs": {"type": "object", "additionalProperties": tensor},
            "outputs": {"type": "object", "additionalProperties": tensor}}}}}
    jsonschema.validate(json.loads((bundle / "configs" / "metadata.json").read_text()), schema)

    image = str(small_chest.parent / next(csv.DictReader(small_chest.open()))["image"])
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["image"] = image
    probs = parser.get_parsed_content("probabilities")
    rows, _, classes = predict_files(smoke_run, [(image, None)])
    expected = [rows[0][f"prob_{c}"] for c in classes]
    assert np.abs(probs.numpy() - np.array(expected)).max() < 1e-5


def test_metadata_and_model_card(smoke_run, tmp_path):
    export_main([str(smoke_run), "--out", str(tmp_path / "model.ts")])
    meta = json.loads((tmp_path / "metadata.json").read_text())
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert meta["task"]["classes"] == ["normal", "pneumonia"] and meta["threshold"] == summary["threshold"]
    assert meta["metrics"]["test"]["auroc"] == summary["test"]["auroc"]
    assert meta["metrics"]["test_ci95_patient_bootstrap"]["auroc"] == summary["test"]["ci95"]["auroc"]
    assert meta["preprocessing"]["image_size"] == 64 and meta["preprocessing"]["reader"]["voi"] == "auto"
    assert meta["model"]["stem"] == "sum" and "torch" in meta["packages"]
    text = json.dumps(meta)
    assert "P00" not in text  # training counts only, no patient ids or file names
    card = (tmp_path / "model_card.md").read_text()
    for heading in ("## Intended use", "## Data", "## Metrics", "## Calibration", "## Limitations",
                    "## How to reproduce"):
        assert heading in card
    assert "auroc" in card and "ECE" in card and "normal" in card


def test_every_consumer_reads_the_deployment_record_and_agrees_with_the_runs_test_predictions(
        smoke_run, small_chest, tmp_path):
    """predict, Grad-CAM's pixels and the ensemble module (which every export traces) all start from
    deployment.json and reproduce the run's own test predictions (16-bit rounding and calibration included)."""
    from pipeline.deploy.cam import load_pixels

    with (smoke_run / "test_predictions.csv").open() as fh:
        expected = list(csv.DictReader(fh))
    images = [(str(small_chest.parent / r["image"]), None) for r in expected]
    want = np.array([float(r["prob_pneumonia"]) for r in expected])
    run = load_run(smoke_run)
    deployment = json.loads((smoke_run / "deployment.json").read_text())
    assert run.threshold == deployment["threshold"] == json.loads((smoke_run / "summary.json").read_text())["threshold"]
    assert deployment["data"]["image_size"] == 64 and deployment["model"]["stem"] == "sum"

    rows, skipped, _ = predict_files(smoke_run, images)
    assert not skipped
    assert np.abs(np.array([r["prob_pneumonia"] for r in rows]) - want).max() < 1e-5

    pixels = torch.from_numpy(np.stack(load_pixels(run, images)))[:, None]  # what Grad-CAM explains
    with torch.no_grad():
        got = export_module(run)(pixels)[:, 1].numpy()
    assert np.abs(got - want).max() < 1e-5

    # the ONNX graph of this same module: test_onnx_matches_pytorch[ensemble]
