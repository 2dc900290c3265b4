"""One fine-tuning stage: which layers train, optimiser and schedule (timm factories), epochs, validation,
early stop, and the best state of the fold by the validation metric.

The pieces are separate functions (optimiser construction, one epoch in engine.py, validation, the best-state
update, the epoch's records); `run_stage` only strings them together.
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
from pipeline.model.models import set_trainable
from pipeline.results.metrics import compute_metrics
from pipeline.results.tracking import Tags, Tracker
from pipeline.schema import Config, StageConfig
from pipeline.train.engine import predict, train_one_epoch
from pipeline.train.features import compute_features, feature_epoch, feature_predict
from pipeline.vocab import EPOCH_METRICS


@dataclass
class TrainContext:
    """What a fold's training needs beyond the config."""

    device: torch.device
    dist: distributed.Dist
    tracker: Tracker
    loss_fn: Callable
    scaler: torch.amp.GradScaler | None = None
    train_sampler: torch.utils.data.DistributedSampler | None = None
    # called after every finished epoch with the position to go on from (fold_K/last.pt)
    on_epoch_end: Callable | None = None
    # builds the (train, val) loaders without augmentation for a cache_features stage, once per fold
    feature_loaders: Callable | None = None
    features: dict = field(default_factory=dict)  # the fold's cached pooled features {'train'|'val': (x, y)}


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


def validate(model, val_loader, cfg: Config, ctx: TrainContext) -> dict:
    out = predict(model, val_loader, cfg.task.type, ctx.device, precision=cfg.train.precision,
                  channels_last=cfg.train.channels_last, loss_fn=ctx.loss_fn)
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


def record_epoch(ctx: TrainContext, state: FoldState, stage: str, stats: dict, metrics: dict,
                 improved: bool) -> None:
    t, f = ctx.tracker, state.fold
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


def validate_features(model, cfg: Config, ctx: TrainContext) -> dict:
    x, y = ctx.features["val"]
    out = feature_predict(model, x, y, cfg.task.type, ctx.loss_fn, cfg.train.batch_size)
    metrics = compute_metrics(cfg.task.type, out["targets"], out["probs"], cfg.task.classes,
                              operating_threshold(cfg))
    metrics["loss"] = out["loss"]
    return metrics


def run_stage(model, stage: StageConfig, cfg: Config, train_loader, val_loader, state: FoldState,
              ctx: TrainContext, *, stage_index: int = 0, resume=None) -> None:
    """`resume` (checkpoint.ResumeState of this stage, epoch_in_stage > 0): go on after its last epoch with
    its optimiser and scheduler state (model weights and RNG states are restored by the caller)."""
    frozen = set_trainable(model, stage.train)
    if stage.freeze_bn:
        frozen = list(model.modules())
    cached = stage.cache_features
    if cached and not ctx.features:
        # once per fold, in eval mode without augmentation; fork_rng: building loaders and running the
        # backbone must not move the RNG streams training draws from (a resumed fold recomputes them)
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            train_plain, val_plain = ctx.feature_loaders()
            ctx.features.update(train=compute_features(model, train_plain, ctx.device),
                                val=compute_features(model, val_plain, ctx.device))
        log.info(f"  fold {state.fold} {stage.name}: cached pooled features of {len(ctx.features['train'][0])} "
                 f"train / {len(ctx.features['val'][0])} val samples (no augmentation in this stage)")
    # a head-only stage never needs the backbone's activations for backward: run it under no_grad (not under
    # DDP, whose gradient hooks need the wrapped forward)
    backbone_no_grad = stage.train == "head" and not ctx.dist.enabled
    train_model = distributed.wrap(model, ctx.dist, ctx.device)
    if cached:
        n = len(ctx.features["train"][0])
        bs = cfg.train.batch_size
        steps_per_epoch = max(1, n // bs if n % bs == 1 and n > 1 else -(-n // bs))
    else:
        steps_per_epoch = max(1, len(train_loader))
    optimizer, scheduler = build_optimizer(model, stage, steps_per_epoch)
    first_epoch, stage_step = 0, 0
    if resume is not None and resume.epoch_in_stage > 0:
        optimizer.load_state_dict(resume.optimizer)
        if scheduler is not None and resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
        if ctx.scaler is not None and resume.scaler is not None:
            ctx.scaler.load_state_dict(resume.scaler)
        first_epoch, stage_step = resume.epoch_in_stage, resume.stage_step
    else:
        state.since_best = 0
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ctx.tracker.log({"event": "stage_start", "fold": state.fold, "stage": stage.name, "train": stage.train,
                         "trainable_params": n_trainable, "cache_features": cached})
    progress = cfg.train.progress and ctx.dist.is_main and not cached
    for epoch_in_stage in range(first_epoch + 1, stage.epochs + 1):
        state.epoch += 1
        if ctx.train_sampler is not None:
            ctx.train_sampler.set_epoch(state.epoch)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(train_loader.sampler), unit="img", leave=False, dynamic_ncols=True,
                       desc=f"fold {state.fold} {stage.name} ep {state.epoch}")

        def on_step(step, loss, lr, offset=state.step - stage_step):  # step counts from the stage start
            ctx.tracker.scalar(Tags.step(stage.name, "train_loss"), loss, offset + step, fold=state.fold)
            ctx.tracker.scalar(Tags.step(stage.name, "lr"), lr, offset + step, fold=state.fold)

        try:
            if cached:
                stats = feature_epoch(model, *ctx.features["train"], optimizer, ctx.loss_fn, cfg.train.batch_size,
                                      scheduler=scheduler, step0=stage_step, on_step=on_step,
                                      log_every=cfg.train.log_every)
            else:
                stats = train_one_epoch(
                    train_model, train_loader, optimizer, ctx.loss_fn, ctx.device, scheduler=scheduler,
                    step0=stage_step, frozen=frozen, precision=cfg.train.precision, scaler=ctx.scaler,
                    channels_last=cfg.train.channels_last, progress=bar, on_step=on_step,
                    log_every=cfg.train.log_every, backbone_no_grad=backbone_no_grad)
        except FloatingPointError as exc:
            raise TrainingError(
                f"fold {state.fold}, stage '{stage.name}', epoch {state.epoch}: {exc}; lower "
                f"train.stages.<{stage.name}>.lr or use train.precision=fp32 (finished folds are kept: "
                "continue with --resume)") from None
        finally:
            if bar is not None:
                bar.close()
        state.step += stats["steps"] - stage_step
        stage_step = stats["steps"]
        metrics = validate_features(model, cfg, ctx) if cached else validate(model, val_loader, cfg, ctx)
        if metrics.pop("constant_prediction", False):
            log.warning(f"warning: fold {state.fold}, stage '{stage.name}', epoch {state.epoch}: the model predicts "
                        "the same probability for every validation image; its AUROC is not a score (lower the "
                        "learning rate, or check the labels)")
        improved = update_best(state, model, monitor_score(metrics, cfg.train.monitor), metrics, stage.name)
        state.since_best = 0 if improved else state.since_best + 1
        record_epoch(ctx, state, stage.name, stats, metrics, improved)
        stop = bool(stage.patience and state.since_best >= stage.patience)
        if stop:
            ctx.tracker.log({"event": "early_stop", "fold": state.fold, "stage": stage.name, "epoch": state.epoch})
        if ctx.on_epoch_end is not None:
            if stop or epoch_in_stage == stage.epochs:  # this stage is over: go on with the next one
                ctx.on_epoch_end(stage_index + 1, 0, 0, None, None)
            else:
                ctx.on_epoch_end(stage_index, epoch_in_stage, stage_step, optimizer, scheduler)
        if stop:
            break
    ctx.tracker.flush()
    del optimizer, train_model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
