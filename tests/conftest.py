"""Fixtures shared by test modules."""

from pathlib import Path

import pytest

from pipeline.demo import make_demo


@pytest.fixture(scope="module")
def small_chest(tmp_path_factory) -> Path:
    """A quarter-size demo chest set (DICOMs + labels.csv) per test module."""
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("chest_xray",), n_scale=0.25)
    return root / "chest_xray" / "labels.csv"
