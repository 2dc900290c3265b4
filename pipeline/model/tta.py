"""Test-time augmentation: the one rule for how a model scores an image with `inference.tta`.

'flip' scores the image and its left-right mirror in one forward pass and averages the two probabilities
(probabilities, not logits: what the fold ensemble averages too). The run's own out-of-fold and test
predictions (engine.predict), predict/evaluate and every export (deploy.inference.EnsembleModule) call
`tta_scores`, so a deployed graph computes what the report scored. Torch ops only, so it exports to ONNX.
"""

from __future__ import annotations

import torch

from pipeline.model.outputs import probabilities

TTA_MODES = ("none", "flip")


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The inputs a model sees for one batch: the batch itself first."""
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, torch.flip(x, dims=(-1,))]
    raise ValueError(f"inference.tta: unknown mode {tta!r} (choose from {', '.join(TTA_MODES)})")


def tta_scores(model, x: torch.Tensor, task_type: str, tta: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the plain view, probabilities averaged over the views). One forward over all views stacked
    along the batch: eval-mode BatchNorm makes that identical to separate passes."""
    views = tta_views(x, tta)
    n = x.shape[0]
    logits = model(torch.cat(views) if len(views) > 1 else x)
    probs = probabilities(task_type, logits)
    probs = probs.reshape(len(views), n, *probs.shape[1:]).mean(0)
    return logits[:n], probs
