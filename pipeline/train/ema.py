"""Weight EMA (`train.ema`): timm's ModelEmaV3, one per stage that trains on images.

The average starts from the weights the stage begins with; validation and the best-checkpoint copy read the
averaged model, and when the stage ends the live model takes the averaged weights, so the next stage goes on
from what was validated. A cached-feature head stage trains a few epochs on fixed features: it is not averaged.
The average travels in the resume checkpoint (fold_K/last.pt), so a resumed stage goes on with it.
"""

from __future__ import annotations

from timm.utils import ModelEmaV3

from pipeline.schema import EmaConfig


def make_ema(model, ema: EmaConfig | None) -> ModelEmaV3 | None:
    if ema is None:
        return None
    # foreach=False: timm's foreach path lerps state_dict views; the per-tensor path is the same arithmetic
    # and keeps channels_last weights as they are
    return ModelEmaV3(model, decay=ema.decay, use_warmup=ema.warmup, foreach=False)


def update_ema(ema: ModelEmaV3 | None, model, step: int) -> None:
    """After optimiser step `step` of the stage (1, 2, ...): timm's first update copies the weights
    (decay 0), later ones lerp with `decay` (or its warm-up)."""
    if ema is not None:
        ema.update(getattr(model, "module", model), step=step)  # DDP wraps the model in .module
