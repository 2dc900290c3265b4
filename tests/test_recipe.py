"""Recipe parts on real tensors: weight EMA (timm ModelEmaV3), test-time flips in the run, predict and ONNX,
MixUp's targets, label smoothing, and the config rules that keep flips away from chest films."""

import copy
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data.datasets import image_reader
from pipeline.deploy.finished import load_run
from pipeline.errors import ConfigError
from pipeline.model.models import build_model
from pipeline.results.tracking import Tracker
from pipeline.schema import EmaConfig
from pipeline.tools.export import export, export_module
from pipeline.tools.predict import predict_files
from pipeline.train.ema import make_ema
from pipeline.train.engine import make_loss, train_one_epoch
from pipeline.train.mixing import build_mixup
from pipeline.train.trainer import FoldTrainer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 1))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(6, 1, 12, 12, generator=g), "target": torch.tensor([0, 1, 0, 1, 1, 0.0])}


def test_ema_equals_hand_computed_average_after_two_steps():
    model, decay = _net(), 0.9
    ema = make_ema(model, EmaConfig(decay=decay, warmup=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = make_loss("binary")
    snapshots = []
    for step in (0, 1):  # two optimiser steps through the training loop itself
        train_one_epoch(model, [_batch(step)], opt, loss, torch.device("cpu"), step0=step, channels_last=False,
                        ema=ema)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    w1, w2 = snapshots
    assert not torch.equal(w1["5.weight"], w2["5.weight"])
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            # timm: the first update copies the weights, the second lerps with `decay`
            assert torch.allclose(v, decay * w1[k] + (1 - decay) * w2[k], atol=1e-6), k


def test_mixup_mixes_targets_with_the_pixels_lambda():
    cfg = load_config("smoke", ["train.mixup={mixup_alpha: 0.4}"])
    mix = build_mixup(cfg)
    torch.manual_seed(3)
    np.random.seed(3)  # timm draws lambda from numpy
    x = torch.rand(5, 1, 8, 8)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    xm, ym = mix(x, y)
    pair = x[:4].flip(0)  # batch mode: the even part mixes with its reverse, the odd last sample stays
    lam = float(((xm[0] - pair[0]) / (x[0] - pair[0])).median())
    assert 0 < lam < 1
    assert torch.allclose(xm[:4], lam * x[:4] + (1 - lam) * pair, atol=1e-5)
    assert torch.allclose(ym[:4], lam * y[:4] + (1 - lam) * y[:4].flip(0), atol=1e-5)
    assert torch.equal(xm[4], x[4]) and ym[4] == 1.0
    # multi-class: probability rows, mixed alike
    mc = load_config("smoke", ["task.type=multiclass", "task.classes=[a, b, c]", "train.mixup={mixup_alpha: 0.4}"])
    np.random.seed(3)
    xm, ym = build_mixup(mc)(x[:4], torch.tensor([0, 2, 1, 2]))
    onehot = F.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()
    lam = float(((xm[0] - x[3]) / (x[0] - x[3])).median())
    assert torch.allclose(ym, lam * onehot + (1 - lam) * onehot.flip(0), atol=1e-5)
    assert torch.allclose(ym.sum(1), torch.ones(4))


def test_label_smoothing_moves_binary_targets_towards_one_half():
    logits = torch.tensor([[2.0], [-1.0]])
    target = torch.tensor([1.0, 0.0])
    got = make_loss("binary", label_smoothing=0.1)(logits, target)
    want = F.binary_cross_entropy_with_logits(logits.squeeze(1), torch.tensor([0.95, 0.05]))
    assert torch.isclose(got, want)
    mc = make_loss("multiclass", label_smoothing=0.1)(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
    assert torch.isclose(mc, F.cross_entropy(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]),
                                             label_smoothing=0.1))


def test_flip_tta_is_refused_for_films_that_are_never_flipped():
    with pytest.raises(ConfigError, match="inference.tta"):
        load_config("chest_xray", ["inference.tta=flip"])
    with pytest.raises(ConfigError, match="train.mixup"):
        load_config("smoke", ["task.type=multilabel", "train.mixup={mixup_alpha: 0.2}"])
    assert load_config("ultrasound", ["inference.tta=flip"]).inference.tta == "flip"


@pytest.fixture(scope="module")
def recipe_run(small_chest, tmp_path_factory):
    """The smoke run with every recipe part on (flips allowed for the test's sake)."""
    run = tmp_path_factory.mktemp("runs") / "recipe"
    sets = ["augment.flip=0.5", "inference.tta=flip", "train.ema={decay: 0.9}", "train.label_smoothing=0.1",
            "train.mixup={mixup_alpha: 0.2, cutmix_alpha: 1.0}", "report.cam_panel=false",
            "data.image_size=32", f"data.manifest={small_chest}"]
    assert main(["--config", "smoke", *[a for s in sets for a in ("--set", s)], "--output-dir", str(run),
                 "--quiet"]) == 0
    return run


def test_tta_is_the_mean_of_plain_and_mirrored_predictions(recipe_run):
    run = load_run(recipe_run)
    module = export_module(run)
    assert module.tta == "flip"
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = module(x)
        module.tta = "none"  # the same fold models without test-time views
        want = (module(x) + module(x.flip(-1))) / 2
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(module(x), want, atol=1e-4)  # the mirror view changes the scores


def test_tta_same_in_run_test_predictions_predict_and_onnx(recipe_run, small_chest, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    with (recipe_run / "test_predictions.csv").open() as fh:
        expected = list(csv.DictReader(fh))[:4]
    images = [(str(small_chest.parent / r["image"]), None) for r in expected]
    rows, skipped, _ = predict_files(recipe_run, images)
    assert not skipped
    export(recipe_run, tmp_path, None, "onnx", check=False, say=lambda *a, **k: None)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    read = image_reader(load_run(recipe_run).deployment.data)
    pixels = torch.stack([read(path, None) for path, _ in images]).numpy()
    onnx_probs = sess.run(None, {"image": pixels})[0]
    for k, (got, want) in enumerate(zip(rows, expected, strict=True)):
        # predict rounds to 6 decimals; the run's CSV holds the fold models' own TTA scores
        assert abs(got["prob_pneumonia"] - float(want["prob_pneumonia"])) < 1e-5
        assert abs(onnx_probs[k, 1] - got["prob_pneumonia"]) < 1e-5


def test_ema_travels_in_the_resume_checkpoint():
    """A fold stopped after its first epoch and resumed from state_dict() ends with the same weights as one
    run straight through: the stage's average goes on instead of restarting from the live weights."""
    cfg = load_config("smoke", ["train.ema={decay: 0.8, warmup: false}", "data.image_size=32", "model.drop_rate=0",
                                "train.stages=[{name: full, train: all, epochs: 2, lr: 0.001}]"])
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(4, 1, 32, 32, generator=g), "target": torch.tensor([0, 1, 0, 1.0]),
                "index": torch.arange(4) + 4 * k} for k in range(2)]

    def trainer():
        torch.manual_seed(0)
        model = build_model(cfg.model, 1).model
        return FoldTrainer(cfg, 0, model, make_loss("binary"), torch.device("cpu"), train_loader=batches,
                           val_loader=batches, tracker=Tracker(None, enabled=False))

    saved = []
    straight = trainer()
    # a deep copy, as last.pt on disk is: on the CPU state_dict() shares the live tensors' storage
    straight.fit(on_epoch_end=lambda t: saved.append(copy.deepcopy(t.state_dict())))
    assert saved[0].ema is not None and saved[0].epoch_in_stage == 1
    resumed = trainer()
    resumed.load_state_dict(saved[0])
    resumed.fit()
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_evaluate_with_and_without_tta_compare_pairwise(recipe_run, smoke_run, small_chest, tmp_path):
    """`evaluate --tta` scores the same fold models with other views; `compare` pairs the two evaluation
    folders on their images. With the run's own views (flip) evaluate reproduces the run's test predictions."""
    from pipeline.tools.compare import compare
    from pipeline.tools.evaluate import main as evaluate_main

    rows = list(csv.DictReader(small_chest.open()))
    manifest = small_chest.parent / "test_rows.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["split"] == "test")
    outs = {}
    for tta in ("flip", "none"):
        outs[tta] = tmp_path / tta
        assert evaluate_main([str(recipe_run), "--manifest", str(manifest), "--out", str(outs[tta]), "--tta", tta,
                              "--allow-overlap", "--quiet"]) == 0
    with (recipe_run / "test_predictions.csv").open() as fh:
        run_probs = {r["image"]: float(r["prob_pneumonia"]) for r in csv.DictReader(fh)}
    for tta, out in outs.items():
        with (out / "predictions.csv").open() as fh:
            got = {r["image"]: float(r["prob_pneumonia"]) for r in csv.DictReader(fh)}
        assert got.keys() == run_probs.keys()
        gap = max(abs(got[k] - run_probs[k]) for k in got)
        assert (gap < 1e-5) if tta == "flip" else (gap > 1e-4), (tta, gap)
    result = compare([outs["none"], outs["flip"]], n_boot=200)
    (pair,) = result["pairs"]
    assert len(result["runs"]) == 2 and result["runs"][0]["n"] == len(run_probs) and pair["delong_p"] is not None
    # never a mirrored view for a run that never trained on one
    assert evaluate_main([str(smoke_run), "--manifest", str(manifest), "--out", str(tmp_path / "x"), "--tta", "flip",
                          "--allow-overlap", "--quiet"]) == 2
