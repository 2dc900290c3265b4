"""Head-only stages on cached features (`train.stages[i].cache_features: true`).

With the backbone frozen, every epoch of a head stage would run the same backbone forward over the same images
again; only the augmentation differs. Caching the pooled features once per fold (eval mode, no augmentation)
turns each epoch into a few small matrix products. The price: no augmentation in that stage. timm's
forward_features + forward_head(pre_logits=True) give the pooled features; model.get_classifier() is the head.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.outputs import probabilities
from pipeline.train.engine import drops_last_batch, epoch_stats


@torch.inference_mode()
def compute_features(model, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features N x C, targets) of every sample of `loader`, on the CPU, in loader order."""
    was_training = model.training
    model.eval()
    feats, targets = [], []
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
        targets.append(batch["target"])
    model.train(was_training)
    return torch.cat(feats), torch.cat(targets)


def _drop_rate(model) -> float:
    # timm applies its dropout between pooling and classifier (forward_head); keep it while training the head
    return float(getattr(model, "drop_rate", 0.0) or 0.0)


def feature_epoch(model, x: torch.Tensor, y: torch.Tensor, optimizer, loss_fn, batch_size: int, *,
                  scheduler=None, step0: int = 0, on_step=None, log_every: int = 10) -> dict:
    """One epoch of the head on cached features; the same dict as engine.train_one_epoch."""
    head = model.get_classifier()
    head.train()
    device = next(head.parameters()).device
    n = len(x)
    order = torch.randperm(n)  # the global torch RNG, like the loader's shuffle
    if drops_last_batch(n, batch_size):  # as the loader
        order = order[: n - 1]
    total, count, step = 0.0, 0, step0
    start = time.perf_counter()
    p = _drop_rate(model)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        logits = head(F.dropout(xb, p=p, training=True) if p else xb)
        loss = loss_fn(logits, yb)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if scheduler is not None:
            scheduler.step_update(num_updates=step)
        total += loss.item() * len(idx)
        count += len(idx)
        if on_step is not None and step % log_every == 0:
            on_step(step, loss.item(), optimizer.param_groups[0]["lr"])
    return epoch_stats(total, count, step, optimizer, start)


@torch.no_grad()
def feature_predict(model, x: torch.Tensor, y: torch.Tensor, task_type: str, loss_fn, batch_size: int) -> dict:
    head = model.get_classifier()
    head.eval()
    device = next(head.parameters()).device
    logits = torch.cat([head(x[i:i + batch_size].to(device)) for i in range(0, len(x), batch_size)])
    return {"probs": probabilities(task_type, logits).cpu().numpy().astype(np.float64), "targets": y.numpy(),
            "loss": loss_fn(logits, y.to(device)).item() if len(x) else None}
