"""One fold's training: `FoldTrainer` owns the model, the current stage's optimiser, scheduler and scaler, the
position (stage, epoch in the stage, optimiser step in the stage), the best state and the cached features.
`state_dict()` / `load_state_dict()` are the resume checkpoint (fold_K/last.pt, as nnU-Net's trainer and MAE's
save_model/load_model keep it): resuming is loading that state and calling `fit()` again.

The pieces of an epoch are plain functions (optimiser construction, one epoch in engine.py, validation, the
best-state update, the epoch's records); the trainer strings them together. New training features (weight
averaging, other schedules) hook in at `_epoch` and travel in `state_dict`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from pipeline import distributed
from pipeline.errors import TrainingError
from pipeline.logs import log
from pipeline.model.checkpoint import ResumeState, capture_rng, restore_rng
from pipeline.model.models import set_trainable
from pipeline.results.metrics import compute_metrics
from pipeline.results.tracking import Tags, Tracker
from pipeline.schema import Config, StageConfig
from pipeline.train.ema import make_ema
from pipeline.train.engine import predict, steps_per_epoch, train_one_epoch
from pipeline.train.features import compute_features, feature_epoch, feature_predict
from pipeline.vocab import EPOCH_METRICS


@dataclass
class FoldState:
    """What carries over between the stages of one fold."""

    fold: int
    epoch: int = 0  # global epoch counter across stages (one TensorBoard axis)
    step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    best_stage: str | None = None
    best_metrics: dict = field(default_factory=dict)
    best_state: dict | None = None  # a CPU copy, never an alias of the live weights
    history: list = field(default_factory=list)
    since_best: int = 0  # epochs of the current stage without improvement (early stop)

    def to_json(self) -> str:
        """Everything but the weights, for last.pt (JSON keeps numpy scalars out of a weights_only file)."""
        return json.dumps({k: v for k, v in vars(self).items() if k != "best_state"})

    @classmethod
    def from_json(cls, text: str, best_state: dict | None) -> FoldState:
        return cls(**json.loads(text), best_state=best_state)


def build_optimizer(model, stage: StageConfig, steps_per_epoch: int):
    """(optimizer, scheduler or None) over the parameters that train in this stage."""
    optimizer = create_optimizer_v2(model, opt=stage.optimizer, lr=stage.lr, weight_decay=stage.weight_decay,
                                    layer_decay=stage.layer_decay)
    scheduler = None
    if stage.scheduler == "cosine" or stage.warmup_epochs:
        total = steps_per_epoch * stage.epochs
        scheduler = CosineLRScheduler(
            optimizer, t_initial=total if stage.scheduler == "cosine" else 10**9,
            lr_min=stage.lr * 0.01, warmup_t=steps_per_epoch * stage.warmup_epochs,
            warmup_lr_init=stage.lr * 0.01, t_in_epochs=False)
    return optimizer, scheduler


def operating_threshold(cfg: Config) -> float:
    """During training the threshold is the configured number; `youden` is chosen later, on all folds."""
    return cfg.report.threshold if isinstance(cfg.report.threshold, float) else 0.5


def validate(model, val_loader, cfg: Config, trainer: FoldTrainer) -> dict:
    out = predict(model, val_loader, cfg.task.type, trainer.device, precision=cfg.train.precision,
                  channels_last=cfg.train.channels_last, loss_fn=trainer.loss_fn)
    metrics = compute_metrics(cfg.task.type, out["targets"], out["probs"], cfg.task.classes,
                              operating_threshold(cfg))
    metrics["loss"] = out["loss"]
    probs = np.asarray(out["probs"], dtype=float)
    # one probability for every image: AUROC is 0.5 or undefined and says nothing (run_stage warns, by name)
    metrics["constant_prediction"] = len(probs) > 1 and float(np.ptp(probs, axis=0).max()) < 1e-6
    return metrics


def monitor_score(metrics: dict, monitor: str) -> float | None:
    """Higher is better. An undefined metric (AUROC with one class) falls back to the loss so a best model is
    still chosen."""
    score = metrics.get(monitor) if monitor != "loss" else None
    if score is None and metrics.get("loss") is not None:
        score = -metrics["loss"]
    return score


def update_best(state: FoldState, model, score: float | None, metrics: dict, stage: str) -> bool:
    """Keep a CPU copy of the weights when `score` beats the best so far (or nothing is kept yet); True when
    kept."""
    improved = score is not None and (state.best_score is None or score > state.best_score)
    improved = improved or state.best_state is None
    if improved:
        state.best_score, state.best_epoch, state.best_stage = score, state.epoch, stage
        state.best_metrics = dict(metrics)
        # a copy: keeping a reference to the live weights would "save" the last epoch, not the best
        state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return improved


def record_epoch(tracker: Tracker, state: FoldState, stage: str, stats: dict, metrics: dict,
                 improved: bool) -> None:
    t, f = tracker, state.fold
    for name in ("loss", *EPOCH_METRICS):
        t.scalar(Tags.val(name), metrics.get(name), state.epoch, fold=f)
    for name in ("loss", "lr", "images_per_s"):
        t.scalar(Tags.train(name), stats[name], state.epoch, fold=f)
    record = {"fold": f, "stage": stage, "epoch": state.epoch, "train_loss": stats["loss"], "lr": stats["lr"],
              "images_per_s": stats["images_per_s"],
              **{f"val_{k}": metrics.get(k) for k in ("loss", "auroc", "auprc", "accuracy")}}
    state.history.append(record)
    t.log({"event": "epoch", **record})
    auroc = metrics.get("auroc")
    log.info(f"  fold {f} {stage:<6} epoch {state.epoch:>2}  train_loss {stats['loss']:.4f}"
             f"  val_loss {metrics['loss']:.4f}  val_auroc {'n/a' if auroc is None else f'{auroc:.4f}'}"
             f"  {stats['images_per_s']:.0f} img/s{'  *' if improved else ''}")


def validate_features(model, cfg: Config, trainer: FoldTrainer) -> dict:
    x, y = trainer.features["val"]
    out = feature_predict(model, x, y, cfg.task.type, trainer.loss_fn, cfg.train.batch_size)
    metrics = compute_metrics(cfg.task.type, out["targets"], out["probs"], cfg.task.classes,
                              operating_threshold(cfg))
    metrics["loss"] = out["loss"]
    return metrics


@dataclass
class Position:
    """Where a fold is: the stage to run (== the number of stages once training is over), the epochs of that stage
    already done (0: it starts fresh, with a new optimiser) and its optimiser steps (the scheduler's position)."""

    stage: int = 0
    epoch_in_stage: int = 0
    step_in_stage: int = 0


class FoldTrainer:
    def __init__(self, cfg: Config, fold: int, model, loss_fn: Callable, device: torch.device, *,
                 train_loader, val_loader, tracker: Tracker, dist: distributed.Dist = distributed.SINGLE,
                 train_sampler=None, feature_loaders: Callable | None = None,
                 scaler: torch.amp.GradScaler | None = None, random_objects=(), mix: Callable | None = None):
        self.cfg, self.model, self.loss_fn, self.device, self.dist = cfg, model, loss_fn, device, dist
        self.train_loader, self.val_loader, self.tracker = train_loader, val_loader, tracker
        self.train_sampler = train_sampler
        # builds the (train, val) loaders without augmentation for a cache_features stage, once per fold
        self.feature_loaders = feature_loaders
        self.scaler = scaler
        self.mix = mix  # MixUp/CutMix of image batches (train.mixup), pipeline/train/mixing.py
        self.ema = None  # the current stage's weight average (train.ema), pipeline/train/ema.py
        self._resume_ema: dict | None = None  # its saved weights, for a resume inside the stage
        self.random_objects = list(random_objects)  # every RNG an epoch draws from, besides the global ones
        self.state = FoldState(fold=fold)
        self.position = Position()
        self.optimizer = self.scheduler = None
        self.features: dict = {}  # the fold's cached pooled features {'train'|'val': (x, y)}
        self._pending: dict | None = None  # optimiser/scheduler/scaler states for the stage a resume goes on with

    # ---- the resume checkpoint ---------------------------------------------------------------------------------
    def state_dict(self) -> ResumeState:
        p = self.position
        return ResumeState(
            fold=self.state.fold, stage_index=p.stage, epoch_in_stage=p.epoch_in_stage, stage_step=p.step_in_stage,
            model={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict() if self.optimizer is not None else None,
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict() if self.scaler is not None and self.optimizer is not None else None,
            fold_state=self.state.to_json(), best_state=self.state.best_state,
            ema=None if self.ema is None else {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()},
            rng=capture_rng(self.random_objects))

    def load_state_dict(self, saved: ResumeState) -> None:
        self.model.load_state_dict(saved.model)
        self.state = FoldState.from_json(saved.fold_state, saved.best_state)
        self.position = Position(saved.stage_index, saved.epoch_in_stage, saved.stage_step)
        self._pending = {"optimizer": saved.optimizer, "scheduler": saved.scheduler, "scaler": saved.scaler}
        self._resume_ema = saved.ema
        restore_rng(saved.rng, self.random_objects)

    # ---- training ----------------------------------------------------------------------------------------------
    def fit(self, on_epoch_end: Callable[[FoldTrainer], None] | None = None) -> FoldState:
        """Every stage from the current position on; `on_epoch_end(self)` after each finished epoch (the caller
        saves `state_dict()` there)."""
        for i in range(self.position.stage, len(self.cfg.train.stages)):
            self._stage(i, on_epoch_end)
        return self.state

    def _cache_features(self, stage: StageConfig) -> None:
        # once per fold, in eval mode without augmentation; fork_rng: building loaders and running the
        # backbone must not move the RNG streams training draws from (a resumed fold recomputes them)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            train_plain, val_plain = self.feature_loaders()
            self.features.update(train=compute_features(self.model, train_plain, self.device),
                                 val=compute_features(self.model, val_plain, self.device))
        log.info(f"  fold {self.state.fold} {stage.name}: cached pooled features of "
                 f"{len(self.features['train'][0])} train / {len(self.features['val'][0])} val samples "
                 "(no augmentation in this stage)")

    def _begin_stage(self, stage: StageConfig, steps_per_epoch: int) -> None:
        """A new optimiser and scheduler for the stage, or, resuming inside it, the saved ones."""
        self.optimizer, self.scheduler = build_optimizer(self.model, stage, steps_per_epoch)
        pending, self._pending = self._pending, None
        if self.position.epoch_in_stage > 0 and pending is not None:
            self.optimizer.load_state_dict(pending["optimizer"])
            if self.scheduler is not None and pending["scheduler"] is not None:
                self.scheduler.load_state_dict(pending["scheduler"])
            if self.scaler is not None and pending["scaler"] is not None:
                self.scaler.load_state_dict(pending["scaler"])
            return
        self.position = Position(self.position.stage)
        self.state.since_best = 0
        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.tracker.log({"event": "stage_start", "fold": self.state.fold, "stage": stage.name,
                          "train": stage.train, "trainable_params": n_trainable,
                          "cache_features": stage.cache_features})

    def _stage(self, index: int, on_epoch_end) -> None:
        cfg, stage, state, model = self.cfg, self.cfg.train.stages[index], self.state, self.model
        frozen = set_trainable(model, stage.train)
        if stage.freeze_bn:
            frozen = list(model.modules())
        cached = stage.cache_features
        if cached and not self.features:
            self._cache_features(stage)
        # a head-only stage never needs the backbone's activations for backward: run it under no_grad (not under
        # DDP, whose gradient hooks need the wrapped forward)
        backbone_no_grad = stage.train == "head" and not self.dist.enabled
        train_model = distributed.wrap(model, self.dist, self.device)
        if cached:
            n, bs = len(self.features["train"][0]), cfg.train.batch_size
            steps = steps_per_epoch(n, bs)
        else:
            steps = max(1, len(self.train_loader))
        self._begin_stage(stage, steps)
        self.ema = None if cached else make_ema(model, cfg.train.ema)
        if self.ema is not None and self._resume_ema is not None and self.position.epoch_in_stage > 0:
            self.ema.module.load_state_dict(self._resume_ema)  # resuming inside the stage: its average goes on
        self._resume_ema = None
        judged = model if self.ema is None else self.ema.module  # what validation and the best copy read
        progress = cfg.train.progress and self.dist.is_main and not cached
        for epoch_in_stage in range(self.position.epoch_in_stage + 1, stage.epochs + 1):
            state.epoch += 1
            if self.train_sampler is not None:
                self.train_sampler.set_epoch(state.epoch)
            stats = self._epoch(stage, train_model, frozen, cached, backbone_no_grad, progress)
            state.step += stats["steps"] - self.position.step_in_stage
            metrics = validate_features(model, cfg, self) if cached else validate(judged, self.val_loader, cfg, self)
            if metrics.pop("constant_prediction", False):
                log.warning(f"warning: fold {state.fold}, stage '{stage.name}', epoch {state.epoch}: the model "
                            "predicts the same probability for every validation image; its AUROC is not a score "
                            "(lower the learning rate, or check the labels)")
            improved = update_best(state, judged, monitor_score(metrics, cfg.train.monitor), metrics, stage.name)
            state.since_best = 0 if improved else state.since_best + 1
            record_epoch(self.tracker, state, stage.name, stats, metrics, improved)
            stop = bool(stage.patience and state.since_best >= stage.patience)
            if stop:
                self.tracker.log({"event": "early_stop", "fold": state.fold, "stage": stage.name,
                                  "epoch": state.epoch})
            if stop or epoch_in_stage == stage.epochs:  # this stage is over: the next one starts fresh
                self.position = Position(index + 1)
                self.optimizer = self.scheduler = None
            else:
                self.position = Position(index, epoch_in_stage, stats["steps"])
            if on_epoch_end is not None:
                on_epoch_end(self)
            if stop:
                break
        if self.ema is not None:  # the next stage goes on from the weights that were validated
            model.load_state_dict(self.ema.module.state_dict())
            self.ema = None
        self.tracker.flush()
        self.optimizer = self.scheduler = None
        del train_model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _epoch(self, stage: StageConfig, train_model, frozen, cached: bool, backbone_no_grad: bool,
               progress: bool) -> dict:
        cfg, state, step0 = self.cfg, self.state, self.position.step_in_stage
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.train_loader.sampler), unit="img", leave=False, dynamic_ncols=True,
                       desc=f"fold {state.fold} {stage.name} ep {state.epoch}")

        def on_step(step, loss, lr, offset=state.step - step0):  # step counts from the stage start
            self.tracker.scalar(Tags.step(stage.name, "train_loss"), loss, offset + step, fold=state.fold)
            self.tracker.scalar(Tags.step(stage.name, "lr"), lr, offset + step, fold=state.fold)

        try:
            if cached:
                return feature_epoch(self.model, *self.features["train"], self.optimizer, self.loss_fn,
                                     cfg.train.batch_size, scheduler=self.scheduler, step0=step0, on_step=on_step,
                                     log_every=cfg.train.log_every)
            return train_one_epoch(
                train_model, self.train_loader, self.optimizer, self.loss_fn, self.device, scheduler=self.scheduler,
                step0=step0, frozen=frozen, precision=cfg.train.precision, scaler=self.scaler,
                channels_last=cfg.train.channels_last, progress=bar, on_step=on_step,
                log_every=cfg.train.log_every, backbone_no_grad=backbone_no_grad, ema=self.ema, mix=self.mix)
        except FloatingPointError as exc:
            raise TrainingError(
                f"fold {state.fold}, stage '{stage.name}', epoch {state.epoch}: {exc}; lower "
                f"train.stages.<{stage.name}>.lr or use train.precision=fp32 (finished folds are kept: "
                "continue with --resume)") from None
        finally:
            if bar is not None:
                bar.close()
