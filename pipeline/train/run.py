"""A whole cross-validated run: manifest -> decoded images -> folds -> stages per fold -> predictions -> report."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.data.meta_obj import set_track_meta
from monai.utils import set_determinism
from torch.utils.data import DistributedSampler

from pipeline import distributed
from pipeline.data.datasets import sample_dataset
from pipeline.data.prepare import Prepared, prepare
from pipeline.data.transforms import sample_transforms
from pipeline.errors import ConfigError
from pipeline.logs import log
from pipeline.model.checkpoint import FoldCheckpoint, load_resume, randomizables, save_checkpoint, save_resume
from pipeline.model.models import build_model
from pipeline.results.records import FoldResult, Scores, Summary
from pipeline.results.tracking import Tags, Tracker
from pipeline.runfolder import RunFolder
from pipeline.schema import Config
from pipeline.threads import apply_threads, loader_workers
from pipeline.train.engine import drops_last_batch, make_loss, predict
from pipeline.train.finish import finish
from pipeline.train.mixing import build_mixup
from pipeline.train.precision import choose_precision, with_precision
from pipeline.train.seeds import seed_config, training_seeds
from pipeline.train.trainer import FoldTrainer, operating_threshold


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


def _loader(cfg: Config, dataset, shuffle: bool, device, sampler=None) -> DataLoader:
    """MONAI's DataLoader: it reseeds each worker's random transforms (torch's would give every worker the same
    augmentations)."""
    n = len(sampler) if sampler is not None else len(dataset)
    drop_last = shuffle and drops_last_batch(n, cfg.train.batch_size)
    workers = loader_workers(cfg, device)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, drop_last=drop_last,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0)


def _log_inputs(cfg: Config, prep: Prepared, train_idx, norm, fold: int, tracker: Tracker, n: int = 16) -> None:
    """A grid of training inputs as the network sees them (augmented), un-normalised for display. A fresh
    transform (own random state) draws them, so logging images leaves the training augmentations unchanged."""
    if not tracker.log_images or not tracker.tensorboard or not tracker.enabled:
        return
    tf = sample_transforms(cfg, norm.mean, norm.std, train=True)
    data = sample_dataset(cfg, prep.decoded, list(train_idx[:n]), tf)
    batch = torch.stack([data[i]["image"] for i in range(len(data))]).float()
    mean = torch.tensor(list(norm.mean)).view(1, -1, 1, 1)[:, : batch.shape[1]]
    std = torch.tensor(list(norm.std)).view(1, -1, 1, 1)[:, : batch.shape[1]]
    tracker.images(fold, (batch * std + mean).clamp(0, 1))


def train_fold(cfg: Config, fold: int, prep: Prepared, folder: RunFolder, device, tracker: Tracker,
               dist: distributed.Dist = distributed.SINGLE, resumable: bool = True) -> FoldResult:
    """One fold, from its fold_K/last.pt when there is one (`resumable`): the FoldTrainer's state after its last
    finished epoch (weights, optimiser, scheduler, position, best state and RNG states). The fold's records past that epoch are cut off
    (Tracker.start_fold), so redone epochs are not logged twice."""
    samples = prep.decoded.samples
    t_fold = time.perf_counter()
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

    def feature_loaders():
        return (_loader(cfg, sample_dataset(cfg, prep.decoded, train_idx, eval_tf), False, device),
                _loader(cfg, sample_dataset(cfg, prep.decoded, val_idx, eval_tf), False, device))

    trainer = FoldTrainer(
        cfg, fold, model, make_loss(cfg.task.type, pos_weight, class_weight, cfg.train.label_smoothing), device,
        train_loader=train_loader, val_loader=val_loader, tracker=tracker, dist=dist, train_sampler=sampler,
        feature_loaders=feature_loaders, mix=build_mixup(cfg), random_objects=randomizables(train_loader.dataset),
        scaler=torch.amp.GradScaler("cuda") if cfg.train.precision == "fp16" and device.type == "cuda" else None)
    f = prep.splits.folds[fold]
    folder.fold_dir(fold).mkdir(parents=True, exist_ok=True)
    last_path = folder.last(fold)
    # every rank reads last.pt (rank 0 wrote it) so all ranks go on from the same epoch
    resume = load_resume(last_path) if resumable else None
    if resume is not None:
        trainer.load_state_dict(resume)
        log.info(f"fold {fold}: resuming after epoch {trainer.state.epoch} (stage {resume.stage_index + 1} of "
                 f"{len(cfg.train.stages)}, from {last_path})")
    if dist.is_main:
        tracker.start_fold(fold, resume.logs if resume is not None else None)
    log.info(f"fold {fold}: {len(train_idx)} train / {len(val_idx)} val samples "
             f"({len(f.train_patients)} / {len(f.val_patients)} patients)")
    if resume is None:
        _log_inputs(cfg, prep, train_idx, norm, fold, tracker)

    def save_position(t: FoldTrainer) -> None:
        if dist.is_main:  # the fold's log sizes too: a resume cuts the records of epochs it redoes
            save_resume(replace(t.state_dict(), logs=tracker.fold_sizes(fold)), last_path)

    state = trainer.fit(on_epoch_end=save_position)
    model.load_state_dict(state.best_state)
    if dist.is_main:
        save_checkpoint(FoldCheckpoint(
            fold=fold, state_dict=state.best_state, model=cfg.model.model_copy(update={"stem": built.stem}),
            task=cfg.task, normalization=norm, pixels=cfg.data.pixel_settings(), best_epoch=state.best_epoch,
            stage=state.best_stage), folder.best(fold))

    def _scores(indices):
        loader = _loader(cfg, sample_dataset(cfg, prep.decoded, indices, eval_tf), False, device)
        out = predict(model, loader, cfg.task.type, device, precision=cfg.train.precision,
                      channels_last=cfg.train.channels_last, tta=cfg.inference.tta)
        return Scores.of(out["indices"].tolist(), out["probs"])

    test_idx = prep.splits.test_indices(samples)
    val = _scores(val_idx)
    tracker.pr_curves(fold, cfg.task, [samples[i].target for i in val.indices], list(val.probs),
                      state.best_epoch)
    # the training loop's validation metrics (per frame, at the training-time threshold) chose the best epoch;
    # the run's reported fold metrics are in summary.json, per image at the run's threshold
    result = FoldResult(
        fold=fold, best_epoch=state.best_epoch, stage=state.best_stage, stem_strategy=built.stem,
        normalization=norm.to_dict(), training_threshold=operating_threshold(cfg),
        metrics_at_training_threshold=state.best_metrics, history=state.history, val=val,
        test=_scores(test_idx) if test_idx else None, seconds=round(time.perf_counter() - t_fold, 1))
    # written last (atomically): its presence marks the fold as finished for --resume and --aggregate; last.pt
    # goes once the result is there (a kill in between leaves last.pt at "training over": predictions redone)
    if dist.is_main:
        RunFolder.write_json(folder.result(fold), result.to_json())
        last_path.unlink(missing_ok=True)
        tracker.end_fold(fold)
    return result


def run(cfg: Config, run_dir: Path | RunFolder, *, folds: list[int] | None = None, resume: bool = False,
        dry_run: bool = False, dist: distributed.Dist = distributed.SINGLE,
        device: torch.device | None = None) -> Summary | None:
    folder = RunFolder.of(run_dir)
    started = time.time()
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
    prep = prepare(cfg, folder, main_rank=dist.is_main)
    if dry_run:
        n_test = len(prep.splits.test_indices(prep.decoded.samples))
        log.info(f"dry run: config and data are valid; {len(prep.decoded.samples)} samples, "
                 f"{prep.splits.n_folds} folds, {n_test} test samples, {len(prep.skipped)} skipped")
        return None
    n_folds = prep.splits.n_folds  # cv.folds, or the number of folds the manifest's fold column publishes
    todo = folds if folds is not None else list(range(n_folds))
    for k in todo:
        if not 0 <= k < n_folds:
            raise ConfigError(f"--fold {k}: must be between 0 and {n_folds - 1} (cv.folds or the fold column)")
    choice = choose_precision(cfg, folder, device, dist)
    tcfg = with_precision(cfg, choice)
    # a part of the folds (`--fold K`, maybe one of many processes on one RUN) writes only its fold_K files;
    # `--aggregate RUN` writes the summary once they are all there
    whole = sorted(set(todo)) == list(range(n_folds))
    tracker = Tracker(folder.root, enabled=dist.is_main, log_images=cfg.tracking.log_images)
    if whole:
        # the resolved config beside the curves, so a TensorBoard view says what produced them
        tracker.text(Tags.CONFIG, "```\n" + folder.config.read_text() + "\n```" if folder.config.exists() else "")
    seeds = training_seeds(cfg)
    per_seed: dict[int, list[FoldResult]] = {}
    trackers = [tracker]
    try:
        for seed in seeds:
            # the same folds for every seed; fold_K/ for one seed, seed_S/fold_K/ (with its own event folders
            # and logs) when repeated
            base, scfg = folder.seed(seed, len(seeds)), seed_config(tcfg, seed)
            seed_tracker = tracker
            if base != folder:
                seed_tracker = Tracker(base.root, enabled=dist.is_main, log_images=cfg.tracking.log_images)
                trackers.append(seed_tracker)
            if seed != cfg.train.seed:
                set_determinism(seed=seed)
                log.info(f"seed {seed} ({seed - cfg.train.seed + 1} of {len(seeds)})")
            results = per_seed[seed] = []
            for k in todo:
                done = base.result(k)
                if resume and done.exists():
                    log.info(f"fold {k}: already finished, reusing {done}")
                    results.append(FoldResult.from_json(RunFolder.read_json(done)))
                    continue
                results.append(train_fold(scfg, k, prep, base, device, seed_tracker, dist, resumable=resume))
        summary = None
        if dist.is_main and whole:
            summary = finish(cfg, folder, prep, per_seed, tracker, choice, started)
        elif dist.is_main:
            log.info(f"fold(s) {', '.join(map(str, todo))} finished in {folder}; once every fold is: "
                     f"python train.py --aggregate {folder}")
    finally:
        for t in trackers:
            t.close()
    return summary
