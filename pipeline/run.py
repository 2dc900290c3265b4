"""A whole cross-validated run: manifest -> decoded images -> folds -> stages per fold -> predictions -> report."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader, DistributedSampler

from . import distributed
from .config import Config
from .cv import fold_indices, heldout_indices, load_splits, make_splits, save_splits
from .datasets import DecodedImages, SampleDataset
from .engine import make_loss, predict
from .errors import ConfigError
from .manifest import load_manifest
from .models import build_model
from .report import write_outputs
from .stages import FoldState, run_stage
from .tracking import Tracker
from .transforms import sample_transforms


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' requested but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def write_skipped(skipped: list[dict], run_dir: Path) -> None:
    with (run_dir / "skipped.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "row", "reason"])
        w.writeheader()
        w.writerows(skipped)


def _class_weights(cfg: Config, rows, train_idx, device):
    if cfg.train.class_weights == "none":
        return None, None
    targets = np.array([rows[i]["target"] for i in train_idx], dtype=float)
    if cfg.task.type == "binary":
        pos = targets.sum()
        return torch.tensor((len(targets) - pos) / max(pos, 1), device=device), None
    if cfg.task.type == "multiclass":
        counts = np.bincount(targets.astype(int), minlength=len(cfg.task.classes)).astype(float)
        w = len(targets) / (len(counts) * np.maximum(counts, 1))
        return None, torch.tensor(w, dtype=torch.float32, device=device)
    pos = np.nansum(targets, 0)
    known = (~np.isnan(targets)).sum(0)
    return torch.tensor((known - pos) / np.maximum(pos, 1), dtype=torch.float32, device=device), None


def prepare(cfg: Config, run_dir: Path, *, resume: bool = False, log=print, main_rank: bool = True):
    """Manifest, decoded images and splits: everything `--dry-run` validates. Deterministic, so every
    torchrun rank computes the same rows and folds; only rank 0 writes them."""
    manifest = load_manifest(cfg)
    t0 = time.perf_counter()
    decoded = DecodedImages(cfg, manifest, progress=cfg.train.progress and main_rank)
    own = sum(r["patient_id"].startswith("image:") for r in manifest.rows)
    if own:
        log(f"warning: {own} samples have no patient id and count as their own patient, so one patient's images "
            "can land in different folds; add a patient_id column or set data.patient_regex")
    log(f"decoded {len(manifest.rows)} samples in {time.perf_counter() - t0:.1f}s"
        + (f"; skipped {len(manifest.skipped)} (see skipped.csv)" if manifest.skipped else ""))
    if main_rank and (manifest.skipped or cfg.data.on_error == "skip"):
        write_skipped(manifest.skipped, run_dir)  # with on_error=skip an empty list is news too
    split_path = run_dir / "splits.json"
    has_split = any(r["split"] == "test" for r in manifest.rows) or cfg.cv.test_fraction == 0
    if resume and split_path.exists():
        splits = load_splits(split_path)
        test = set(splits["test_patients"])
        for r in manifest.rows:
            r["split"] = "test" if r["patient_id"] in test else "train"
    else:
        splits = make_splits(manifest.rows, cfg, manifest_has_split=has_split)
        if main_rank:
            save_splits(splits, split_path)
    return manifest, decoded, splits


def _loader(cfg, dataset, shuffle: bool, device, sampler=None):
    n = len(sampler) if sampler is not None else len(dataset)
    # a training batch of one sample breaks BatchNorm in train mode: drop it (the shuffle varies which)
    drop_last = shuffle and n % cfg.train.batch_size == 1 and n > 1
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.data.num_workers > 0)


def train_fold(cfg: Config, fold: int, manifest, decoded, splits, run_dir: Path, device, tracker, log=print,
               dist: distributed.Dist = distributed.SINGLE):
    rows = manifest.rows
    torch.manual_seed(cfg.train.seed + fold)
    model, norm = build_model(cfg.model, cfg.task.num_outputs)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_idx, val_idx = fold_indices(rows, splits, fold)
    train_tf = sample_transforms(cfg, norm.mean, norm.std, train=True)
    eval_tf = sample_transforms(cfg, norm.mean, norm.std, train=False)
    train_set = SampleDataset(decoded, rows, train_idx, train_tf)
    # under torchrun each rank trains on its shard; batch_size is per process
    sampler = DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True,
                                 seed=cfg.train.seed) if dist.enabled else None
    train_loader = _loader(cfg, train_set, True, device, sampler)
    val_loader = _loader(cfg, SampleDataset(decoded, rows, val_idx, eval_tf), False, device)
    pos_weight, class_weight = _class_weights(cfg, rows, train_idx, device)
    ctx = SimpleNamespace(
        device=device, precision=cfg.train.precision, channels_last=cfg.train.channels_last, task=cfg.task,
        loss_fn=make_loss(cfg.task.type, pos_weight, class_weight), tracker=tracker, monitor=cfg.train.monitor,
        threshold=cfg.report.threshold if isinstance(cfg.report.threshold, float) else 0.5,
        progress=cfg.train.progress and dist.is_main, log_every=cfg.train.log_every, dist=dist,
        train_sampler=sampler,
        scaler=torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" and device.type == "cuda" else None)
    log(f"fold {fold}: {len(train_idx)} train / {len(val_idx)} val samples "
        f"({len(splits['folds'][fold]['train_patients'])} / {len(splits['folds'][fold]['val_patients'])} patients)")
    state = FoldState(fold=fold)
    for stage in cfg.train.stages:
        run_stage(model, stage, train_loader, val_loader, state, ctx)

    model.load_state_dict(state.best_state)
    fold_dir = run_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        torch.save({
            "state_dict": state.best_state,
            "model": cfg.model.model_dump(mode="json"),
            "normalization": norm.to_dict(),
            "stem_strategy": model.stem_strategy,
            "task": cfg.task.model_dump(mode="json"),
            "image_size": cfg.data.image_size,
            "fold": fold, "best_epoch": state.best_epoch, "stage": state.best_stage,
        }, fold_dir / "best.pt")

    val = predict(model, val_loader, cfg.task.type, device, precision=cfg.train.precision,
                  channels_last=cfg.train.channels_last)
    test_idx = heldout_indices(rows)
    test = None
    if test_idx:
        test_loader = _loader(cfg, SampleDataset(decoded, rows, test_idx, eval_tf), False, device)
        test = predict(model, test_loader, cfg.task.type, device, precision=cfg.train.precision,
                       channels_last=cfg.train.channels_last)
    result = {
        "fold": fold, "best_epoch": state.best_epoch, "stage": state.best_stage,
        "stem_strategy": model.stem_strategy, "normalization": norm.to_dict(),
        "metrics": state.best_metrics, "history": state.history,
        "val": {"indices": val["indices"].tolist(), "probs": val["probs"].tolist()},
        "test": None if test is None else {"indices": test["indices"].tolist(), "probs": test["probs"].tolist()},
    }
    # written last: its presence marks the fold as finished for --resume
    if dist.is_main:
        (fold_dir / "result.json").write_text(json.dumps(result))
    return result


def run(cfg: Config, run_dir: Path, *, folds: list[int] | None = None, resume: bool = False,
        dry_run: bool = False, log=print, dist: distributed.Dist = distributed.SINGLE,
        device: torch.device | None = None) -> dict | None:
    set_determinism(seed=cfg.train.seed)
    device = device or pick_device(cfg.train.device)
    if not dist.is_main:
        log = lambda *a, **k: None  # noqa: E731
    # weights that cannot be had should stop the run before minutes of decoding, and --dry-run should say so
    probe, norm = build_model(cfg.model, cfg.task.num_outputs)
    log(f"model: {cfg.model.backbone} ({cfg.model.pretrained} weights, {probe.stem_strategy} stem); "
        f"input normalisation mean {list(norm.mean)} std {list(norm.std)}")
    del probe
    manifest, decoded, splits = prepare(cfg, run_dir, resume=resume, log=log, main_rank=dist.is_main)
    if dry_run:
        n_test = len(heldout_indices(manifest.rows))
        log(f"dry run: config and data are valid; {len(manifest.rows)} samples, {len(splits['folds'])} folds, "
            f"{n_test} test samples, {len(manifest.skipped)} skipped")
        return None
    todo = folds if folds is not None else list(range(cfg.cv.folds))
    for k in todo:
        if not 0 <= k < cfg.cv.folds:
            raise ConfigError(f"--fold {k}: must be between 0 and {cfg.cv.folds - 1} (cv.folds)")
    tracker = Tracker(run_dir, enabled=dist.is_main)
    # the resolved config beside the curves, so a TensorBoard view says what produced them
    tracker.text("config", "```\n" + (run_dir / "config.yaml").read_text() + "\n```"
                 if (run_dir / "config.yaml").exists() else "")
    results = []
    try:
        for k in todo:
            done = run_dir / f"fold_{k}" / "result.json"
            if resume and done.exists():
                log(f"fold {k}: already finished, reusing {done}")
                results.append(json.loads(done.read_text()))
                continue
            results.append(train_fold(cfg, k, manifest, decoded, splits, run_dir, device, tracker, log, dist))
        summary = write_outputs(cfg, run_dir, manifest, splits, results, tracker) if dist.is_main else None
    finally:
        tracker.close()
    return summary
