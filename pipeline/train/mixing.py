"""MixUp / CutMix (`train.mixup`) with timm's Mixup, in the target format the loss takes.

timm mixes a batch with its reverse (mode 'batch'): x' = lam x + (1 - lam) x.flip(0), and the targets alike.
Binary targets (B,) are mixed as one dense label column (timm's multi_label path), multi-class ones become
(B, C) probability rows. Label smoothing stays in the loss (train.label_smoothing), not here, so it is applied
once whether or not a batch is mixed. timm needs an even batch: an odd last sample is left unmixed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.data import Mixup

from pipeline.schema import Config


def build_mixup(cfg: Config) -> Callable | None:
    m = cfg.train.mixup
    if m is None:
        return None
    binary = cfg.task.type == "binary"
    n_classes = 1 if binary else len(cfg.task.classes)
    mixer = Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                  mode="batch", label_smoothing=0.0, num_classes=n_classes, multi_label=binary)

    def dense(y: torch.Tensor) -> torch.Tensor:
        return y.float().reshape(-1, 1) if binary else F.one_hot(y.long(), n_classes).float()

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        even = x.shape[0] - x.shape[0] % 2
        if even < 2:
            return x, (y.float() if binary else dense(y))
        x = x.clone()  # timm mixes in place
        head, target = mixer(x[:even], y[:even].float().reshape(-1, 1) if binary else y[:even].long())
        x = torch.cat([head, x[even:]]) if even < x.shape[0] else head
        target = torch.cat([target, dense(y[even:])]) if even < y.shape[0] else target
        return x, (target.reshape(-1) if binary else target)

    return mix
