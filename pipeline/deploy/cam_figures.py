"""Grad-CAM figures a clinician reads right: titles that name the class whose probability is shown, that fit
their axes, and a colour bar saying what the colours mean.

"normal p=0.10" on a map read as "10 % normal" when it meant P(pneumonia) = 0.10, and four such titles ran into
each other on a 608-pixel panel; so every probability here is written `P(class) = 0.10` (`prob_label`), titles
are short lines, and a title still wider than its axes is set in a smaller font until it fits (`fit_titles`).
The drawing is matplotlib's; what this module adds is the wording and the fitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CMAP = "jet"
COLORBAR_LABEL = "Grad-CAM, 0-1 per image\n(1: strongest evidence)"
MIN_FONT = 4.0


def prob_label(cls: str, p: float) -> str:
    """'P(pneumonia) = 0.10': the class the number belongs to, always."""
    return f"P({cls}) = {p:.2f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def overlay(ax, image: np.ndarray, cam: np.ndarray, title: str | None = None, alpha: float = 0.45,
            fontsize: float = 7):
    """The map over the grey image on ax; returns the map's image (for a colour bar)."""
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
    shown = ax.imshow(cam, cmap=CMAP, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():  # axes kept (not set_axis_off) so a row label (ylabel) stays laid out
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=fontsize)
    return shown


def _shrink(text, limit: float, size, renderer) -> None:
    while size(text.get_window_extent(renderer)) > limit and text.get_fontsize() > MIN_FONT:
        text.set_fontsize(text.get_fontsize() - 0.5)


def fit_titles(fig, axes, colorbar=None) -> None:
    """Shrink each axes title until it is no wider than its axes, and the colour bar's label until it is no
    taller than the bar (down to MIN_FONT points)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        if ax.title.get_text():
            _shrink(ax.title, ax.get_window_extent(renderer).width, lambda b: b.width, renderer)
    if colorbar is not None:
        label = colorbar.ax.yaxis.label
        _shrink(label, colorbar.ax.get_window_extent(renderer).height, lambda b: b.height, renderer)
    fig.canvas.draw()


def cam_panel(images: Sequence[np.ndarray | None], maps: Sequence[np.ndarray | None], titles: Sequence[str],
              out: Path, ncols: int = 4, row_labels: Sequence[str] | None = None) -> Path:
    """One PNG grid of maps over their images (each (S, S) in [0, 1]; None leaves the cell empty), with one
    colour bar for all of them."""
    return _save(panel_figure(images, maps, titles, ncols, row_labels), out, dpi=90)


def panel_figure(images, maps, titles: Sequence[str], ncols: int = 4, row_labels: Sequence[str] | None = None):
    plt = _plt()
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols + 1.0, 2.45 * nrows), squeeze=False,
                             layout="constrained")
    shown = bar = None
    for k, ax in enumerate(axes.flat):
        if k < n and images[k] is not None:
            shown = overlay(ax, images[k], maps[k], titles[k])
        else:
            ax.set_axis_off()
    for r, label in enumerate((row_labels or [])[:nrows]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, shrink=0.9, aspect=30)
        bar.set_label(COLORBAR_LABEL, fontsize=7)
    fit_titles(fig, axes.flat, bar)
    return fig


def cam_figure(image: np.ndarray, cam: np.ndarray, title_lines: Sequence[str], out: Path) -> Path:
    """One image with its map, a title of a few lines and a colour bar, as a PNG."""
    return _save(single_figure(image, cam, title_lines), out, dpi=100)


def single_figure(image: np.ndarray, cam: np.ndarray, title_lines: Sequence[str]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0), layout="constrained")
    shown = overlay(ax, image, cam, "\n".join(title_lines), fontsize=8)
    bar = fig.colorbar(shown, ax=ax, shrink=0.8)
    bar.set_label(COLORBAR_LABEL, fontsize=7)
    fit_titles(fig, [ax], bar)
    return fig


def _save(fig, out: Path, dpi: int) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    _plt().close(fig)
    return out
