"""Fixtures shared by test modules."""

import logging
from pathlib import Path

import pytest

from pipeline.demo import make_demo


@pytest.fixture(scope="module")
def small_chest(tmp_path_factory) -> Path:
    """A quarter-size demo chest set (DICOMs + labels.csv) per test module."""
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("chest_xray",), n_scale=0.25)
    return root / "chest_xray" / "labels.csv"


@pytest.fixture
def graystem_warnings():
    """Warning messages of the project's logger during one test. caplog would miss them once any CLI run in the
    session has set the logger up: it stops propagating to the root logger then, so the console shows each
    line once."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("graystem")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
