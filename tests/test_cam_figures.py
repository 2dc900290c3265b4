"""Grad-CAM figures: titles name the class whose probability they show, every text lies inside the figure and
within its axes, and a colour bar says what the colours mean. Drawn from constructed arrays (no model)."""

import itertools

import numpy as np
import pytest
from matplotlib.text import Text

from pipeline.deploy.cam import cam_caption, panel_title
from pipeline.deploy.cam_figures import COLORBAR_LABEL, panel_figure, prob_label, single_figure
from pipeline.schema import TaskConfig

BINARY = TaskConfig(name="cxr", type="binary", classes=["normal", "pneumonia"])
MULTI = TaskConfig(name="us", type="multiclass", classes=["benign", "malignant", "normal_tissue_far_from_any_lesion"])


def _image(seed, size=48):
    rng = np.random.default_rng(seed)
    return rng.random((size, size)).astype(np.float32), rng.random((size, size)).astype(np.float32)


def _texts(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [(t, t.get_window_extent(renderer)) for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _assert_inside(fig):
    box = fig.bbox
    for t, ext in _texts(fig):
        assert ext.x0 >= box.x0 - 0.5 and ext.x1 <= box.x1 + 0.5, (t.get_text(), ext, box)
        assert ext.y0 >= box.y0 - 0.5 and ext.y1 <= box.y1 + 0.5, (t.get_text(), ext, box)


def test_prob_label_names_the_class():
    assert prob_label("pneumonia", 0.1) == "P(pneumonia) = 0.10"


def test_panel_titles_name_the_class_fit_their_axes_and_do_not_overlap():
    rows = [{"label": "normal", "_score": 0.10, "_pred": "normal"},
            {"label": "pneumonia", "_score": 0.97, "_pred": "pneumonia"},
            {"label": "pneumonia", "_score": 0.21, "_pred": "normal"}] * 4
    titles = [panel_title(r, BINARY) for r in rows]
    # the probability is of the positive class whatever the truth or the decision ("normal p=0.10" misread)
    assert titles[0] == "truth: normal\nP(pneumonia) = 0.10\nmap: normal"
    pairs = [_image(k) for k in range(len(rows))]
    fig = panel_figure([a for a, _ in pairs], [b for _, b in pairs], titles, ncols=4,
                       row_labels=["top pneumonia", "top normal", "confident errors"])
    _assert_inside(fig)
    renderer = fig.canvas.get_renderer()
    cells = [ax for ax in fig.axes if ax.get_title()]
    assert len(cells) == 12
    for ax in cells:
        assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width + 0.5
    boxes = [ax.title.get_window_extent(renderer) for ax in cells]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    assert any(ax.get_ylabel() == COLORBAR_LABEL for ax in fig.axes)  # the colour bar and what it means


def test_a_long_class_name_is_set_smaller_until_it_fits():
    rows = [{"label": "normal_tissue_far_from_any_lesion", "_score": 0.9, "_pred": "normal_tissue_far_from_any_lesion"}] * 4
    titles = [panel_title(r, MULTI) for r in rows]
    assert "P(normal_tissue_far_from_any_lesion) = 0.90" in titles[0]  # multi-class: the decided class's probability
    pairs = [_image(k) for k in range(4)]
    fig = panel_figure([a for a, _ in pairs], [b for _, b in pairs], titles, ncols=4)
    _assert_inside(fig)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:4]:
        assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width + 0.5
        assert ax.title.get_fontsize() < 7  # shrunk from the default 7 pt


@pytest.mark.parametrize("target, p, decided, mapped", [("positive", 0.62, "pneumonia", "pneumonia"),
                                                         ("positive", 0.30, "normal", "pneumonia"),
                                                         ("predicted", 0.30, "normal", "normal")])
def test_single_cam_title_has_class_probability_threshold_and_mapped_class(target, p, decided, mapped):
    lines = cam_caption(BINARY, 0.431, np.array([1 - p, p]), target)
    assert lines == [f"P(pneumonia) = {p:.2f}, threshold 0.43 → {decided}", f"map: evidence for {mapped}"]
    image, cam = _image(1, 64)
    fig = single_figure(image, cam, ["P0001_1.dcm", *lines])
    _assert_inside(fig)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.title.get_text().startswith("P0001_1.dcm\nP(pneumonia)")
    assert ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width + 0.5
    assert fig.axes[1].get_ylabel() == COLORBAR_LABEL
    # the overlay is the map on the image: the colour-mapped layer holds the map's values
    assert np.array_equal(ax.images[1].get_array(), cam)


def test_multiclass_caption_names_the_most_probable_class():
    lines = cam_caption(MULTI, 0.5, np.array([0.2, 0.7, 0.1]))
    assert lines == ["P(malignant) = 0.70 (most probable class)", "map: evidence for malignant"]
