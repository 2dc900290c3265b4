
"""The training core's contracts: loader workers, early stopping, best-state copies, frame averaging, the 16-bit
cache, the fold ensemble and the patient bootstrap."""

import json

import numpy as np
import pytest
import torch
from monai.utils import set_determinism
from PIL import Image

from pipeline.config import load_config
from pipeline.data.datasets import Decoded, dequantize, quantize, sample_dataset
from pipeline.data.manifest import Sample
from pipeline.data.transforms import sample_transforms
from pipeline.results.metrics import bootstrap_ci
from pipeline.results.records import FoldResult, Scores
from pipeline.results.report import _aggregate
from pipeline.train.run import _loader


def _sample(image, i=0, patient="P1", frame=None, target=1):
    return Sample(image=str(image), image_text=str(image), target=target, label="x", patient_id=patient,
                  patient_known=True, split=None, frame=frame, row=i + 2)


def test_loader_workers_draw_different_augmentations_and_repeat_with_the_seed(tmp_path):
    """monai.data.DataLoader reseeds each worker: two workers never replay the same augmentations, and the same
    seed gives the same ones again (torch's DataLoader gave every forked worker the same random state)."""
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    cfg = load_config("smoke", ["data.cache=none", "data.num_workers=2", "data.image_size=32", "train.batch_size=1",
                                "augment.rotate_deg=30", "augment.gamma=0.5"])
    decoded = Decoded((_sample(tmp_path / "x.png"),), None, ())
    tf = sample_transforms(cfg, (0.5,), (0.5,), train=True)

    def epoch():
        set_determinism(seed=7)
        loader = _loader(cfg, sample_dataset(cfg, decoded, [0] * 8, tf), False, torch.device("cpu"))
        return [b["image"][0] for b in loader]

    first = epoch()
    # batches alternate between the two workers: 0, 2, 4, 6 come from worker 0 and 1, 3, 5, 7 from worker 1
    for a in range(8):
        for b in range(a + 1, 8):
            assert not torch.allclose(first[a], first[b]), (a, b)
    again = epoch()
    for x, y in zip(first, again, strict=True):
        assert torch.equal(x, y)


class _Scripted:
    """validate() replacement: returns the next scripted AUROC and remembers the weights it saw."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.seen = []

    def __call__(self, model, loader, cfg, trainer):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"auroc": self.scores.pop(0), "loss": 0.5, **getattr(self, "extra", {})}


def _fold_state_after(monkeypatch, scores, patience, constant=False):
    import timm

    from pipeline.distributed import SINGLE
    from pipeline.results.tracking import Tracker
    from pipeline.train import trainer as trainer_module
    from pipeline.train.engine import make_loss

    scripted = _Scripted(scores)
    if constant:
        scripted.extra = {"constant_prediction": True}
    monkeypatch.setattr(trainer_module, "validate", scripted)
    cfg = load_config("smoke", [f"train.stages=[{{name: full, train: all, epochs: {len(scores)}, lr: 0.01, "
                                f"patience: {patience or 'null'}}}]"])
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=1, in_chans=1)
    data = [{"image": torch.randn(4, 1, 32, 32), "target": torch.tensor([0.0, 1.0, 0.0, 1.0]),
             "index": torch.arange(4)} for _ in range(2)]
    trainer = trainer_module.FoldTrainer(cfg, 0, model, make_loss("binary"), torch.device("cpu"), train_loader=data,
                                         val_loader=data, tracker=Tracker(None, enabled=False), dist=SINGLE)
    state = trainer.fit()
    assert trainer.position.stage == 1 and trainer.optimizer is None  # training over: nothing half-way
    return state, scripted, model


def test_early_stopping_honours_patience(monkeypatch):
    state, scripted, _ = _fold_state_after(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.69, 0.95], patience=3)
    assert state.epoch == 5  # epochs 3, 4, 5 without improvement: the 0.95 of epoch 6 is never reached
    assert state.best_epoch == 2 and state.best_score == 0.7
    assert len(scripted.scores) == 1


def test_best_state_is_a_copy_of_the_best_epoch_not_the_live_weights(monkeypatch):
    state, scripted, model = _fold_state_after(monkeypatch, [0.6, 0.9, 0.7], patience=None)
    best, last = scripted.seen[1], model.state_dict()
    name = "fc.weight"
    assert torch.equal(state.best_state[name], best[name])
    assert not torch.equal(state.best_state[name], last[name])  # training went on after the best epoch
    assert state.best_state[name].data_ptr() != last[name].data_ptr()


def test_a_model_that_scores_every_image_alike_is_named_in_a_warning(monkeypatch, graystem_warnings):
    import timm

    from pipeline.distributed import SINGLE
    from pipeline.results.tracking import Tracker
    from pipeline.train import trainer as trainer_module
    from pipeline.train.engine import make_loss

    cfg = load_config("smoke")
    ctx = trainer_module.FoldTrainer(cfg, 0, None, make_loss("binary"), torch.device("cpu"), train_loader=None,
                                     val_loader=None, tracker=Tracker(None, enabled=False), dist=SINGLE)
    torch.manual_seed(0)
    data = [{"image": torch.randn(4, 1, 32, 32), "target": torch.tensor([0.0, 1.0, 0.0, 1.0]),
             "index": torch.arange(4)}]
    model = timm.create_model("resnet10t", num_classes=1, in_chans=1).eval()
    assert not trainer_module.validate(model, data, cfg, ctx)["constant_prediction"]
    torch.nn.init.zeros_(model.fc.weight)  # the bias alone: one probability for every image
    assert trainer_module.validate(model, data, cfg, ctx)["constant_prediction"]
    _fold_state_after(monkeypatch, [0.5, 0.5], patience=None, constant=True)
    assert any("fold 0, stage 'full', epoch 1: the model predicts the same probability for every validation image"
               in w for w in graystem_warnings), graystem_warnings


def test_frames_are_averaged_per_file_before_scoring():
    samples = [_sample("a.dcm", 0, "P1", frame=k, target=1) for k in range(3)]
    samples += [_sample("b.dcm", 1, "P2", frame=k, target=0) for k in range(2)]
    probs = [0.9, 0.6, 0.3, 0.2, 0.4]
    items = _aggregate(samples, [0, 1, 2, 3, 4], probs, fold_of=[0] * 5)
    assert [(it["image"], it["frames"]) for it in items] == [("a.dcm", 3), ("b.dcm", 2)]
    assert items[0]["prob"] == pytest.approx(0.6) and items[1]["prob"] == pytest.approx(0.3)


def test_fold_ensemble_matches_rows_by_index_not_position():
    a = Scores.of([5, 7, 9], [0.1, 0.5, 0.9])
    b = Scores.of([9, 5, 7], [0.7, 0.3, 0.1])  # the same rows in another order
    ens = Scores.mean_by_index([a, b], complete=True)
    assert ens.indices == (5, 7, 9) and ens.n_models == 2
    np.testing.assert_allclose(ens.probs, [0.2, 0.3, 0.8])
    with pytest.raises(ValueError):
        Scores.mean_by_index([a, Scores.of([5, 7, 8], [0.1, 0.2, 0.3])], complete=True)
    # a fold result survives its JSON file unchanged (fold_K/result.json)
    res = FoldResult(fold=1, best_epoch=3, stage="full", val=a, test=ens, history=[{"epoch": 1}])
    assert FoldResult.from_json(json.loads(json.dumps(res.to_json()))) == res


def test_16_bit_cache_round_trips_within_one_step():
    x = torch.rand(1, 64, 64)
    x[0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])
    back = dequantize(quantize(x))
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert (back - x).abs().max().item() <= 0.5 / 65535 + 1e-7


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_correlated_images():
    """20 near-identical images per patient: resampling images would pretend to have 400 independent cases."""
    rng = np.random.default_rng(3)
    n_pat, per = 20, 20
    patients = np.repeat(np.arange(n_pat), per)
    y = np.repeat(np.arange(n_pat) % 2, per)
    base = np.repeat(np.clip(0.5 + (y[::per] - 0.5) * 0.3 + rng.normal(0, 0.25, n_pat), 0, 1), per)
    p = np.clip(base + rng.normal(0, 0.01, n_pat * per), 0, 1)
    by_patient = bootstrap_ci("binary", y, p, ["n", "p"], patients, n=300, seed=0)["auroc"]
    by_image = bootstrap_ci("binary", y, p, ["n", "p"], np.arange(n_pat * per), n=300, seed=0)["auroc"]
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])
