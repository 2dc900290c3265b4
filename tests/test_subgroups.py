"""Subgroup metrics on constructed predictions, and attributes from manifest rows and a real DICOM header."""

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sklearn.metrics import roc_auc_score

from pipeline.results.subgroups import age_band, attributes, forest_plot, markdown, subgroup_table


def _items(seed=0):
    rng = np.random.default_rng(seed)
    items, attrs = [], {}
    for i in range(240):
        view = "AP" if i < 150 else ("PA" if i < 230 else "LL")  # LL: 10 images, below the floor
        y = int(rng.random() < (0.6 if view == "AP" else 0.3))
        p = float(np.clip(rng.normal(0.35 + 0.3 * y + (0.15 if view == "AP" else 0), 0.2), 0, 1))
        items.append({"image": f"img{i}.png", "patient_id": f"p{i // 2}", "target": y, "prob": p})
        attrs[f"img{i}.png"] = {"view_position": view}
    return items, attrs


def test_subgroup_auroc_equals_sklearn_and_small_group_has_no_estimate():
    items, attrs = _items()
    rows = subgroup_table("binary", ["normal", "pneumonia"], items, attrs, ["view_position"], 0.5, min_n=20,
                          n_boot=60, seed=0)
    by = {r["group"]: r for r in rows}
    assert set(by) == {"AP", "PA", "LL"}
    for view in ("AP", "PA"):
        sel = [it for it in items if attrs[it["image"]]["view_position"] == view]
        y, p = [it["target"] for it in sel], [it["prob"] for it in sel]
        assert by[view]["auroc"] == pytest.approx(roc_auc_score(y, p))
        pos = [q >= 0.5 for q, t in zip(p, y, strict=True) if t == 1]
        assert by[view]["sensitivity"] == pytest.approx(np.mean(pos))
        assert by[view]["n_images"] == len(sel) and by[view]["n_patients"] == len({it["patient_id"] for it in sel})
        lo, hi = by[view]["ci95"]["auroc"]
        assert lo <= by[view]["auroc"] <= hi
        rest = [it for it in items if attrs[it["image"]]["view_position"] != view]
        d = by[view]["difference"]["auroc"]
        assert d["value"] == pytest.approx(by[view]["auroc"] - roc_auc_score([it["target"] for it in rest],
                                                                             [it["prob"] for it in rest]))
        assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
    assert by["LL"]["too_small"] and by["LL"]["auroc"] is None and by["LL"]["ci95"] == {}
    table = "\n".join(markdown(rows, "test"))
    ll = next(line for line in table.splitlines() if "| LL |" in line)
    assert "too small" in ll and not any(ch.isdigit() for ch in ll.split("too small")[1].split("|")[1:])
    assert forest_plot({"test": rows}) is not None


def test_age_band_from_numbers_and_dicom_age_strings():
    assert [age_band(v) for v in ("39", "40", "060Y", "61", "018M", "", None, "abc")] == \
        ["<40", "40-60", "40-60", ">60", "<40", "unknown", "unknown", "unknown"]


def _dicom(path, view, sex, age):
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.ViewPosition, ds.PatientSex, ds.PatientAge, ds.Manufacturer = view, sex, age, "ACME"
    ds.set_pixel_data(np.zeros((4, 4), np.uint16), "MONOCHROME2", 12)
    ds.save_as(path, enforce_file_format=True)


def test_attributes_from_manifest_columns_and_dicom_headers(tmp_path):
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    _dicom(a, "PA", "F", "072Y")
    _dicom(b, "AP", "M", "035Y")
    samples = [SimpleNamespace(image=str(a), image_text="a.dcm", row=2),
               SimpleNamespace(image=str(b), image_text="b.dcm", row=3)]
    # the manifest gives sex for row 2 only (blank for row 3): the column wins, a blank cell is 'unknown'
    records = {2: {"image": "a.dcm", "patient_sex": "female"}, 3: {"image": "b.dcm", "patient_sex": ""}}
    got = attributes(["view_position", "patient_sex", "age_band", "manufacturer"], samples, records)
    assert got["a.dcm"] == {"view_position": "PA", "patient_sex": "female", "age_band": ">60", "manufacturer": "ACME"}
    assert got["b.dcm"] == {"view_position": "AP", "patient_sex": "unknown", "age_band": "<40", "manufacturer": "ACME"}


def test_rank_auroc_equals_sklearn_with_ties():
    from pipeline.results.subgroups import auroc

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 1)  # many ties
    assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auroc(np.ones(4), np.arange(4)) is None
