"""A grid of images with a caption each, for a person to confirm findings at a glance (near copies, suspect
labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_montage(path: Path, rows: list[list[tuple[np.ndarray, str]]], title: str) -> None:
    """rows of (2-D or 1xHxW image, caption) -> one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.4 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(rows):
        for j, (image, caption) in enumerate(row):
            axes[i, j].imshow(np.asarray(image).reshape(np.asarray(image).shape[-2:]), cmap="gray")
            axes[i, j].set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
