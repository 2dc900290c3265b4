"""From model outputs to class probabilities, and the probability columns of every prediction file.

One rule for every consumer (training, the reports, predict, evaluate, export): a binary model has one logit for
the positive class (sigmoid); multi-class uses softmax; multi-label one sigmoid per class. Files and exported
graphs show one column per class in `task.classes` order. These are torch ops so an exported graph computes
exactly what predict computes.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.schema import TaskConfig


def probabilities(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """(B, n_outputs) logits -> the model's own scores: (B,) for binary, (B, C) otherwise."""
    logits = logits.float()
    if task_type == "binary":
        return torch.sigmoid(logits.squeeze(1))
    if task_type == "multiclass":
        return torch.softmax(logits, 1)
    return torch.sigmoid(logits)


def class_columns(task_type: str, positive_index: int, scores: torch.Tensor) -> torch.Tensor:
    """Scores from `probabilities` -> (B, C), one column per class in class order (binary: p and 1 - p)."""
    if task_type != "binary":
        return scores
    p = scores.reshape(-1, 1)
    return torch.cat([p, 1 - p], 1) if positive_index == 0 else torch.cat([1 - p, p], 1)


def class_matrix(task: TaskConfig, scores) -> np.ndarray:
    """numpy scores (n,) or (n, C) -> (n, C) in class order: what prediction CSVs write."""
    t = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    return class_columns(task.type, task.classes.index(task.positive), t).numpy()


def probability_fields(task: TaskConfig) -> list[str]:
    return [f"prob_{c}" for c in task.classes]
