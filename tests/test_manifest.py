"""Manifest rows from a CSV or a folder of class folders: labels, splits, patient ids, exclusions, frames."""

import csv

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.data.manifest import load_manifest
from pipeline.errors import ConfigError, DataError


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


@pytest.fixture
def kermany_like(tmp_path):
    """The layout public pneumonia sets ship: split folders, class folders, patient in the file name."""
    root = tmp_path / "xray"
    _png(root / "train" / "NORMAL" / "IM-0001-0001.png", 10)
    _png(root / "train" / "PNEUMONIA" / "person1_bacteria_1.png", 20)
    _png(root / "train" / "PNEUMONIA" / "person1_bacteria_2.png", 30)
    _png(root / "val" / "NORMAL" / "IM-0002-0001.png", 40)
    _png(root / "test" / "PNEUMONIA" / "person7_virus_3.png", 50)
    _png(root / "test" / "PNEUMONIA" / "person7_virus_3_mask.png", 60)
    _png(root / "train" / "NORMAL" / ".hidden.png", 70)
    (root / "README.txt").write_text("not an image")
    return root


def test_folder_manifest_labels_splits_patients_and_exclusions(kermany_like):
    cfg = load_config("chest_xray", [f"data.manifest={kermany_like}", "data.demo=null", "data.exclude=['*_mask*']",
                                     r"data.patient_regex=(?:person(\d+)_|IM-(\d+)-)"])
    m = load_manifest(cfg)
    got = {r.image_text: (r.label, r.split, r.target) for r in m.samples}
    assert got == {
        "train/NORMAL/IM-0001-0001.png": ("normal", "train", 0),
        "train/PNEUMONIA/person1_bacteria_1.png": ("pneumonia", "train", 1),
        "train/PNEUMONIA/person1_bacteria_2.png": ("pneumonia", "train", 1),
        "val/NORMAL/IM-0002-0001.png": ("normal", "train", 0),  # the folds draw their own validation
        "test/PNEUMONIA/person7_virus_3.png": ("pneumonia", "test", 1),
    }
    pids = {r.image_text.split("/")[-1]: r.patient_id for r in m.samples}
    assert pids["person1_bacteria_1.png"] == pids["person1_bacteria_2.png"] == "1"
    assert pids["IM-0001-0001.png"] == "0001" and pids["person7_virus_3.png"] == "7"
    assert m.patient_source == "regex" and not m.skipped


def test_folder_without_regex_makes_each_image_its_own_patient(kermany_like):
    cfg = load_config("chest_xray", [f"data.manifest={kermany_like}", "data.demo=null"])
    rows = load_manifest(cfg).samples
    assert len(rows) == 6  # the mask is in, nothing excluded
    assert len({r.patient_id for r in rows}) == 6
    assert not any(r.patient_known for r in rows) and all(r.patient_id == r.image_text for r in rows)


def test_file_outside_class_folders_is_an_error_or_skipped(kermany_like):
    _png(kermany_like / "train" / "misc" / "x.png", 5)
    cfg = load_config("chest_xray", [f"data.manifest={kermany_like}", "data.demo=null"])
    with pytest.raises(DataError, match="no label"):
        load_manifest(cfg)
    cfg = load_config("chest_xray", [f"data.manifest={kermany_like}", "data.demo=null", "data.on_error=skip"])
    m = load_manifest(cfg)
    assert [s.image.endswith("misc/x.png") for s in m.skipped] == [True]


def test_csv_patient_column_regex_fallback_and_exclude(tmp_path):
    for name in ("a/p01_1.png", "a/p01_2.png", "a/p02_1.png", "a/p02_1_mask.png"):
        _png(tmp_path / name, 9)
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient_id"])
        w.writerows([["a/p01_1.png", "normal", "X"], ["a/p01_2.png", "normal", ""],
                     ["a/p02_1.png", "pneumonia", ""], ["a/p02_1_mask.png", "pneumonia", ""]])
    cfg = load_config("chest_xray", [f"data.manifest={tmp_path / 'labels.csv'}", "data.demo=null",
                                     r"data.patient_regex=p(?P<patient>\d+)_", "data.exclude=['*_mask.png']"])
    rows = load_manifest(cfg).samples
    assert [r.patient_id for r in rows] == ["X", "01", "02"]  # the column wins where it is filled


def test_bad_patient_regex_is_a_config_error():
    with pytest.raises(ConfigError, match="data.patient_regex"):
        load_config("chest_xray", ["data.patient_regex=person(\\d+"])


def test_multilabel_from_name_lists_and_uncertain_values(tmp_path):
    """NIH-style 'A|B' label lists, and CheXpert-style -1 (uncertain) read as unknown."""
    _png(tmp_path / "x.png", 1)
    with (tmp_path / "nih.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "Patient ID"])
        w.writerows([["x.png", "Effusion|Nodule", "7"], ["x.png", "No Finding", "8"], ["x.png", "Hernia", "9"]])
    cfg = load_config("chest_xray", [f"data.manifest={tmp_path / 'nih.csv'}", "data.demo=null", "task.type=multilabel",
                                     "task.classes=[Effusion, Nodule]", "task.positive_class=null",
                                     "data.patient_column=Patient ID"])
    rows = load_manifest(cfg).samples
    assert [r.target for r in rows] == [(1.0, 1.0), (0.0, 0.0), (0.0, 0.0)]
    assert [r.patient_id for r in rows] == ["7", "8", "9"]

    with (tmp_path / "chexpert.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "patient_id", "Effusion", "Nodule"])
        w.writerows([["x.png", "1", "1.0", "-1.0"], ["x.png", "2", "", "0.0"]])
    cfg = load_config("chest_xray", [f"data.manifest={tmp_path / 'chexpert.csv'}", "data.demo=null",
                                     "task.type=multilabel", "task.classes=[Effusion, Nodule]",
                                     "task.positive_class=null"])
    rows = load_manifest(cfg).samples
    assert rows[0].target[0] == 1.0 and np.isnan(rows[0].target[1])
    assert np.isnan(rows[1].target[0]) and rows[1].target[1] == 0.0
