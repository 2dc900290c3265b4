"""Fixtures shared by test modules: the small demo set and the trained smoke run are made ONCE per test session
(every module that needs a finished run reads this one instead of training its own)."""

import logging
from pathlib import Path

import pytest

from pipeline.demo import make_demo


@pytest.fixture(scope="session")
def small_chest(tmp_path_factory) -> Path:
    """A quarter-size demo chest set (DICOMs + labels.csv), shared read-only by the whole session."""
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("chest_xray",), n_scale=0.25)
    return root / "chest_xray" / "labels.csv"


@pytest.fixture(scope="session")
def smoke_run(small_chest, tmp_path_factory) -> Path:
    """The smoke config trained once on `small_chest` (2 folds, 1 + 1 epochs, Grad-CAM panel on). Tests read it;
    the ones that change a run folder work on a copy (`copy_run`)."""
    from pipeline.cli import main

    run = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["--config", "smoke", "--set", f"data.manifest={small_chest}", "--output-dir", str(run),
                 "--quiet"]) == 0
    return run


@pytest.fixture
def copy_run(smoke_run, tmp_path) -> Path:
    """A private copy of the shared smoke run, for tests that resume or rewrite it."""
    import shutil

    return Path(shutil.copytree(smoke_run, tmp_path / "run"))


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


def bad_label_manifest(small_chest: Path, folder: Path) -> Path:
    """The small chest manifest with one label outside task.classes (row 4: 'covid'), absolute image paths."""
    import csv

    rows = list(csv.DictReader(small_chest.open()))
    rows[3]["label"] = "covid"
    bad = folder / "labels.csv"
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r["image"] = str(small_chest.parent / r["image"])
            w.writerow(r)
    return bad
