"""A whole cross-validated run: manifest -> decoded images -> folds -> stages per fold -> predictions -> report."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.data.meta_obj import set_track_meta
from monai.utils import set_determinism
from torch.utils.data import DistributedSampler

from . import distributed
from .checkpoint import FoldCheckpoint, fold_checkpoint_path, save_checkpoint
from .config import Config
from .cv import Splits, load_splits, make_splits, save_splits
from .datasets import Decoded, decode_samples, sample_dataset
from .engine import make_loss, predict
from .errors import ConfigError
from .manifest import Manifest, Skipped, load_manifest
from .models import build_model
from .report import write_outputs
from .stages import FoldState, TrainContext, run_stage
from .threads import apply_threads, loader_workers
from .tracking import Tags, Tracker, log
from .transforms import sample_transforms


@dataclass(frozen=True)
class Prepared:
    """Everything `--dry-run` validates: the manifest as loaded, the decoded samples and the splits."""

    manifest: Manifest
    decoded: Decoded
    splits: Splits

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.manifest.skipped + self.decoded.skipped


def write_skipped(skipped, run_dir: Path) -> None:
    with (run_dir / "skipped.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "row", "reason"])
        w.writeheader()
        w.writerows(s.as_dict() for s in skipped)


def _class_weights(cfg: Config, samples, train_idx, device):
    if cfg.train.class_weights == "none":
        return None, None
    targets = np.array([samples[i].target for i in train_idx], dtype=float)
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


def prepare(cfg: Config, run_dir: Path, *, resume: bool = False, main_rank: bool = True) -> Prepared:
    """Deterministic, so every torchrun rank computes the same samples and folds; only rank 0 writes them."""
    manifest = load_manifest(cfg)
    t0 = time.perf_counter()
    decoded = decode_samples(cfg, manifest.samples, progress=cfg.train.progress and main_rank)
    own = sum(not s.patient_known for s in decoded.samples)
    if own:
        log.warning(f"warning: {own} samples have no patient id and count as their own patient, so one patient's "
                    "images can land in different folds; add a patient_id column or set data.patient_regex")
    skipped = manifest.skipped + decoded.skipped
    log.info(f"decoded {len(decoded.samples)} samples in {time.perf_counter() - t0:.1f}s{decoded.cache_note}"
             + (f"; skipped {len(skipped)} (see skipped.csv)" if skipped else ""))
    if main_rank and (skipped or cfg.data.on_error == "skip"):
        write_skipped(skipped, run_dir)  # with on_error=skip an empty list is news too
    split_path = run_dir / "splits.json"
    if resume and split_path.exists():
        splits = load_splits(split_path)
    else:
        splits = make_splits(decoded.samples, cfg)
        if main_rank:
            save_splits(splits, split_path)
    return Prepared(manifest, decoded, splits)


def _loader(cfg: Config, dataset, shuffle: bool, device, sampler=None) -> DataLoader:
    """MONAI's DataLoader: it reseeds each worker's random transforms (torch's would give every worker the same
    augmentations)."""
    n = len(sampler) if sampler is not None else len(dataset)
    # a training batch of one sample breaks BatchNorm in train mode: drop it (the shuffle varies which)
    drop_last = shuffle and n % cfg.train.batch_size == 1 and n > 1
    workers = loader_workers(cfg, device)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, drop_last=drop_last,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


def train_fold(cfg: Config, fold: int, prep: Prepared, run_dir: Path, device, tracker: Tracker,
               dist: distributed.Dist = distributed.SINGLE) -> dict:
    samples = prep.decoded.samples
    torch.manual_seed(cfg.train.seed + fold)
    built = build_model(cfg.model, cfg.task.num_outputs)
    model, norm = built.model.to(device), built.norm
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    train_idx, val_idx = prep.splits.fold_indices(samples, fold)
    train_tf = sample_transforms(cfg, norm.mean, norm.std, train=True)
    eval_tf = sample_transforms(cfg, norm.mean, norm.std, train=False)
    train_set = sample_dataset(cfg, prep.decoded, train_idx, train_tf)
    # under torchrun each rank trains on its shard; batch_size is per process
    sampler = DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True,
                                 seed=cfg.train.seed) if dist.enabled else None
    train_loader = _loader(cfg, train_set, True, device, sampler)
    val_loader = _loader(cfg, sample_dataset(cfg, prep.decoded, val_idx, eval_tf), False, device)
    pos_weight, class_weight = _class_weights(cfg, samples, train_idx, device)
    ctx = TrainContext(
        device=device, dist=dist, tracker=tracker, loss_fn=make_loss(cfg.task.type, pos_weight, class_weight),
        scaler=torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" and device.type == "cuda" else None,
        train_sampler=sampler)
    f = prep.splits.folds[fold]
    log.info(f"fold {fold}: {len(train_idx)} train / {len(val_idx)} val samples "
             f"({len(f.train_patients)} / {len(f.val_patients)} patients)")
    state = FoldState(fold=fold)
    for stage in cfg.train.stages:
        run_stage(model, stage, cfg, train_loader, val_loader, state, ctx)

    model.load_state_dict(state.best_state)
    fold_dir = run_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main:
        save_checkpoint(FoldCheckpoint(
            fold=fold, state_dict=state.best_state, model=cfg.model.model_copy(update={"stem": built.stem}),
            task=cfg.task, normalization=norm, pixels=cfg.data.pixel_settings(), best_epoch=state.best_epoch,
            stage=state.best_stage), fold_checkpoint_path(run_dir, fold))

    def _scores(indices):
        loader = _loader(cfg, sample_dataset(cfg, prep.decoded, indices, eval_tf), False, device)
        out = predict(model, loader, cfg.task.type, device, precision=cfg.train.precision,
                      channels_last=cfg.train.channels_last)
        return {"indices": out["indices"].tolist(), "probs": out["probs"].tolist()}

    test_idx = prep.splits.test_indices(samples)
    result = {
        "fold": fold, "best_epoch": state.best_epoch, "stage": state.best_stage,
        "stem_strategy": built.stem, "normalization": norm.to_dict(),
        "metrics": state.best_metrics, "history": state.history,
        "val": _scores(val_idx), "test": _scores(test_idx) if test_idx else None,
    }
    # written last: its presence marks the fold as finished for --resume
    if dist.is_main:
        (fold_dir / "result.json").write_text(json.dumps(result))
    return result


def run(cfg: Config, run_dir: Path, *, folds: list[int] | None = None, resume: bool = False,
        dry_run: bool = False, dist: distributed.Dist = distributed.SINGLE,
        device: torch.device | None = None) -> dict | None:
    set_determinism(seed=cfg.train.seed)
    set_track_meta(False)  # plain tensors through every MONAI transform: no MetaTensor bookkeeping per sample
    device = device or distributed.select_device(cfg.train.device)
    threads = apply_threads(cfg)  # once, before any work: torch's threads and the decode pool's processes
    log.info(f"threads: {threads} (train.threads; torch and the decode pool), "
             f"{loader_workers(cfg, device)} loader workers (data.num_workers: {cfg.data.num_workers})")
    # weights that cannot be had should stop the run before minutes of decoding, and --dry-run should say so
    probe = build_model(cfg.model, cfg.task.num_outputs)
    log.info(f"model: {cfg.model.backbone} ({cfg.model.pretrained} weights, {probe.stem} stem); "
             f"input normalisation mean {list(probe.norm.mean)} std {list(probe.norm.std)}")
    del probe
    prep = prepare(cfg, run_dir, resume=resume, main_rank=dist.is_main)
    if dry_run:
        n_test = len(prep.splits.test_indices(prep.decoded.samples))
        log.info(f"dry run: config and data are valid; {len(prep.decoded.samples)} samples, "
                 f"{prep.splits.n_folds} folds, {n_test} test samples, {len(prep.skipped)} skipped")
        return None
    todo = folds if folds is not None else list(range(cfg.cv.folds))
    for k in todo:
        if not 0 <= k < cfg.cv.folds:
            raise ConfigError(f"--fold {k}: must be between 0 and {cfg.cv.folds - 1} (cv.folds)")
    tracker = Tracker(run_dir, enabled=dist.is_main)
    # the resolved config beside the curves, so a TensorBoard view says what produced them
    config_file = run_dir / "config.yaml"
    tracker.text(Tags.CONFIG, "```\n" + config_file.read_text() + "\n```" if config_file.exists() else "")
    results = []
    try:
        for k in todo:
            done = run_dir / f"fold_{k}" / "result.json"
            if resume and done.exists():
                log.info(f"fold {k}: already finished, reusing {done}")
                results.append(json.loads(done.read_text()))
                continue
            results.append(train_fold(cfg, k, prep, run_dir, device, tracker, dist))
        summary = write_outputs(cfg, run_dir, prep, results, tracker) if dist.is_main else None
    finally:
        tracker.close()
    return summary
