"""One epoch of training and one pass of evaluation: plain functions that return dicts.

The orchestration (stages, folds, checkpoints) lives in stages.py and run.py.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.models import freeze_bn_stats
from pipeline.model.tta import tta_scores
from pipeline.train.ema import update_ema


def drops_last_batch(n: int, batch_size: int) -> bool:
    """A training batch of one sample breaks BatchNorm in train mode: an epoch whose last batch would hold one
    sample drops it (the shuffle varies which). The one rule for the image loader and the cached-feature loop."""
    return n > 1 and n % batch_size == 1


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size if drops_last_batch(n, batch_size) else -(-n // batch_size))


def make_loss(task_type: str, pos_weight: torch.Tensor | None = None, class_weight: torch.Tensor | None = None,
              label_smoothing: float = 0.0):
    """Soft targets (MixUp: binary floats, multi-class (B, C) rows) are accepted as they are."""
    eps = label_smoothing

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if task_type == "binary":
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), target * (1 - eps) + eps / 2,
                                                      pos_weight=pos_weight)
        if task_type == "multiclass":
            return F.cross_entropy(logits, target if target.ndim == 2 else target.long(), weight=class_weight,
                                   label_smoothing=eps)
        known = ~torch.isnan(target)  # multi-label: blank labels are unknown and left out of the loss
        per = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target) * (1 - eps) + eps / 2,
                                                 pos_weight=pos_weight, reduction="none")
        return (per * known).sum() / known.sum().clamp(min=1)

    return loss_fn


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch, device, channels_last: bool):
    x = batch["image"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch["target"].to(device, non_blocking=True)


def train_one_epoch(model, loader, optimizer, loss_fn, device, *, scheduler=None, step0: int = 0,
                    frozen=(), precision="fp32", scaler=None, channels_last=True, progress=None,
                    on_step=None, log_every: int = 10, backbone_no_grad: bool = False, ema=None,
                    mix=None) -> dict:
    """`frozen`: modules whose BatchNorm statistics must not move (backbone-frozen stage).
    `ema`: a timm ModelEmaV3 updated after every optimiser step; `mix`: (x, y) -> mixed (x, y) (MixUp/CutMix).
    `backbone_no_grad`: only the head trains, so timm's forward_features runs under no_grad (no activations
    kept for a backward that never reaches them) and only forward_head builds a graph."""
    model.train()
    freeze_bn_stats(frozen)
    total, count = 0.0, 0
    start = time.perf_counter()
    step = step0
    for batch in loader:
        x, y = _to_device(batch, device, channels_last)
        if mix is not None:
            x, y = mix(x, y)
        with autocast(device, precision):
            if backbone_no_grad:
                with torch.no_grad():
                    features = model.forward_features(x)
                logits = model.forward_head(features)
            else:
                logits = model(x)
        loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        update_ema(ema, model, step)
        if scheduler is not None:
            scheduler.step_update(num_updates=step)
        n = x.shape[0]
        total += loss.item() * n
        count += n
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{total / count:.4f}")
        if on_step is not None and step % log_every == 0:
            on_step(step, loss.item(), optimizer.param_groups[0]["lr"])
    return epoch_stats(total, count, step, optimizer, start)


def epoch_stats(total_loss: float, count: int, step: int, optimizer, start: float) -> dict:
    """What one training epoch reports: mean loss, last LR, optimiser steps so far and throughput."""
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(count, 1), "lr": optimizer.param_groups[0]["lr"], "steps": step,
            "images_per_s": count / elapsed if elapsed > 0 else math.nan}


@torch.no_grad()
def predict(model, loader, task_type: str, device, *, precision="fp32", channels_last=True, loss_fn=None,
            tta: str = "none") -> dict:
    """Returns {'probs': ndarray, 'targets': ndarray, 'indices': ndarray, 'loss': float or None}. `tta`
    (inference.tta) averages the probabilities over the test-time views; the loss is the plain view's."""
    model.eval()
    probs, targets, indices = [], [], []
    total, count = 0.0, 0
    for batch in loader:
        x, y = _to_device(batch, device, channels_last)
        with autocast(device, precision):
            logits, p = tta_scores(model, x, task_type, tta)
        if loss_fn is not None:
            total += loss_fn(logits, y).item() * x.shape[0]
            count += x.shape[0]
        probs.append(p.cpu())
        targets.append(batch["target"])
        indices.append(batch["index"])
    return {
        "probs": torch.cat(probs).numpy().astype(np.float64),
        "targets": torch.cat(targets).numpy(),
        "indices": torch.cat(indices).numpy(),
        "loss": total / count if count else None,
    }
