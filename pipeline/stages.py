"""One fine-tuning stage: which layers train, optimiser and schedule (timm factories), epochs, early stop,
and the best checkpoint of the fold by the validation metric."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from . import distributed
from .config import StageConfig
from .engine import predict, train_one_epoch
from .metrics import compute_metrics
from .models import set_trainable


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


def _score(metrics: dict, monitor: str) -> float | None:
    if monitor == "loss":
        return None if metrics.get("loss") is None else -metrics["loss"]
    return metrics.get(monitor)


def run_stage(model, stage: StageConfig, train_loader, val_loader, state: FoldState, ctx) -> None:
    """ctx: SimpleNamespace with device, precision, channels_last, task, loss_fn, tracker, monitor,
    threshold, progress (bool), log_every, scaler, dist, train_sampler."""
    frozen = set_trainable(model, stage.train)
    if stage.freeze_bn:
        frozen = list(model.modules())
    train_model = distributed.wrap(model, ctx.dist, ctx.device)
    optimizer = create_optimizer_v2(model, opt=stage.optimizer, lr=stage.lr, weight_decay=stage.weight_decay,
                                    layer_decay=stage.layer_decay)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = None
    if stage.scheduler == "cosine" or stage.warmup_epochs:
        total = steps_per_epoch * stage.epochs
        scheduler = CosineLRScheduler(
            optimizer, t_initial=total if stage.scheduler == "cosine" else 10**9,
            lr_min=stage.lr * 0.01, warmup_t=steps_per_epoch * stage.warmup_epochs,
            warmup_lr_init=stage.lr * 0.01, t_in_epochs=False)
    tag = f"fold_{state.fold}"
    since_best = 0
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ctx.tracker.log({"event": "stage_start", "fold": state.fold, "stage": stage.name, "train": stage.train,
                     "trainable_params": n_trainable})
    stage_step = 0
    for _ in range(stage.epochs):
        state.epoch += 1
        if ctx.train_sampler is not None:
            ctx.train_sampler.set_epoch(state.epoch)
        bar = None
        if ctx.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(train_loader.sampler), unit="img", leave=False, dynamic_ncols=True,
                       desc=f"fold {state.fold} {stage.name} ep {state.epoch}")

        def on_step(step, loss, lr, offset=state.step - stage_step):  # step counts from the stage start
            ctx.tracker.scalar(f"{tag}/{stage.name}/train_loss", loss, offset + step)
            ctx.tracker.scalar(f"{tag}/{stage.name}/lr", lr, offset + step)

        stats = train_one_epoch(
            train_model, train_loader, optimizer, ctx.loss_fn, ctx.device, scheduler=scheduler, step0=stage_step,
            frozen=frozen, precision=ctx.precision, scaler=ctx.scaler, channels_last=ctx.channels_last,
            progress=bar, on_step=on_step, log_every=ctx.log_every)
        if bar is not None:
            bar.close()
        state.step += stats["steps"] - stage_step
        stage_step = stats["steps"]
        out = predict(model, val_loader, ctx.task.type, ctx.device, precision=ctx.precision,
                      channels_last=ctx.channels_last, loss_fn=ctx.loss_fn)
        metrics = compute_metrics(ctx.task.type, out["targets"], out["probs"], ctx.task.classes, ctx.threshold)
        metrics["loss"] = out["loss"]
        for name in ("loss", "auroc", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"):
            ctx.tracker.scalar(f"{tag}/val/{name}", metrics.get(name), state.epoch)
        ctx.tracker.scalar(f"{tag}/train/loss", stats["loss"], state.epoch)
        ctx.tracker.scalar(f"{tag}/train/lr", stats["lr"], state.epoch)
        ctx.tracker.scalar(f"{tag}/train/images_per_s", stats["images_per_s"], state.epoch)
        record = {"fold": state.fold, "stage": stage.name, "epoch": state.epoch, "train_loss": stats["loss"],
                  "lr": stats["lr"], "images_per_s": stats["images_per_s"],
                  **{f"val_{k}": metrics.get(k) for k in ("loss", "auroc", "auprc", "accuracy")}}
        state.history.append(record)
        ctx.tracker.log({"event": "epoch", **record})
        score = _score(metrics, ctx.monitor)
        if score is None:  # e.g. AUROC undefined: fall back to the loss so a best model is still chosen
            score = -metrics["loss"] if metrics.get("loss") is not None else None
        improved = score is not None and (state.best_score is None or score > state.best_score)
        if improved or state.best_state is None:
            state.best_score, state.best_epoch, state.best_stage = score, state.epoch, stage.name
            state.best_metrics = {k: v for k, v in metrics.items() if k != "per_class"} | (
                {"per_class": metrics["per_class"]} if "per_class" in metrics else {})
            # a CPU copy: keeping a reference to the live weights would "save" the last epoch, not the best
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
        if ctx.progress:
            auroc = metrics.get("auroc")
            print(f"  fold {state.fold} {stage.name:<6} epoch {state.epoch:>2}  train_loss {stats['loss']:.4f}"
                  f"  val_loss {metrics['loss']:.4f}  val_auroc {'n/a' if auroc is None else f'{auroc:.4f}'}"
                  f"  {stats['images_per_s']:.0f} img/s{'  *' if improved else ''}", flush=True)
        if stage.patience and since_best >= stage.patience:
            ctx.tracker.log({"event": "early_stop", "fold": state.fold, "stage": stage.name, "epoch": state.epoch})
            break
    ctx.tracker.flush()
    del optimizer, train_model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
