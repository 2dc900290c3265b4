"""The command-line tools (pipeline.tools) in-process on real files: index_dicom, audit, preview, benchmark."""

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.demo import make_demo
from pipeline.tools import audit, benchmark, index_dicom, preview

data = pytest.importorskip("pydicom.data")


def _testfile(name: str) -> str:
    path = data.get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available (pip install pydicom-data)")
    return path


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_demo(root, which=("chest_xray",), n_scale=0.25)
    return root / "chest_xray"


# ---------------------------------------------------------------- index_dicom
@pytest.fixture(scope="module")
def tree(demo, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "dicom"
    for src, dst in (("CT_small.dcm", "a/ct.dcm"), ("OBXXXX1A_2frame.dcm", "a/b/us_2frame"),  # no extension
                     ("MR_small_RLE.dcm", "c/mr.dcm")):
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_testfile(src), root / dst)
    (root / "demo" / "deeper").mkdir(parents=True)
    # two images of one demo patient plus one of another
    by_patient = {}
    for r in _read_csv(demo / "labels.csv")[1]:
        by_patient.setdefault(r["patient_id"], []).append(r["image"])
    two = next(v for v in by_patient.values() if len(v) >= 2)[:2]
    one = next(v for v in by_patient.values() if v[0] not in two)[:1]
    for image in two + one:
        shutil.copy(demo / image, root / "demo" / "deeper" / Path(image).name)
    (root / "c" / "garbage.dcm").write_bytes(b"this is not a DICOM file\n" * 20)
    (root / "notes.txt").write_text("ignored")
    return root


def _dicoms(tree: Path) -> list[Path]:
    return sorted(p for p in tree.rglob("*") if p.is_file() and p.name not in ("garbage.dcm", "notes.txt"))


def test_index_dicom_headers_and_skipped(tree, tmp_path, capsys):
    out = tmp_path / "out" / "manifest.csv"
    assert index_dicom.main([str(tree), "--out", str(out)]) == 0
    cols, rows = _read_csv(out)
    assert cols == ["image", "patient_id", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
                    "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames", "BitsStored"]
    expected = _dicoms(tree)
    assert len(rows) == len(expected) >= 5
    assert {(out.parent / r["image"]).resolve() for r in rows} == {p.resolve() for p in expected}
    for r in rows:
        ds = pydicom.dcmread(out.parent / r["image"], stop_before_pixels=True)
        assert r["SOPInstanceUID"] == ds.SOPInstanceUID and r["patient_id"] == str(ds.PatientID)
        assert (int(r["Rows"]), int(r["Columns"])) == (ds.Rows, ds.Columns)
        assert int(r["NumberOfFrames"]) == int(ds.get("NumberOfFrames") or 1)
        assert r["Modality"] == ds.Modality and int(r["BitsStored"]) == ds.BitsStored
    us = next(r for r in rows if r["image"].endswith("us_2frame"))
    assert (us["Rows"], us["Columns"], us["NumberOfFrames"]) == ("600", "800", "2")
    _, skipped = _read_csv(out.with_suffix(".skipped.csv"))
    assert [Path(s["path"]).name for s in skipped] == ["garbage.dcm"] and skipped[0]["reason"]
    printed = capsys.readouterr().out
    assert "garbage.dcm" in printed and "1 unreadable" in printed


def test_index_dicom_joins_labels_by_uid_and_by_file(tree, tmp_path, capsys):
    ct = pydicom.dcmread(tree / "a" / "ct.dcm", stop_before_pixels=True)
    mr = pydicom.dcmread(tree / "c" / "mr.dcm", stop_before_pixels=True)
    labels = tmp_path / "by_uid.csv"
    labels.write_text(f"SOPInstanceUID,diagnosis\n{ct.SOPInstanceUID},normal\n{mr.SOPInstanceUID},pneumonia\n"
                      "1.2.3.4.5.6.7,normal\n")
    out = tmp_path / "uid.csv"
    assert index_dicom.main([str(tree), "--out", str(out), "--labels", str(labels), "--key", "SOPInstanceUID",
                             "--label-column", "diagnosis"]) == 0
    cols, rows = _read_csv(out)
    assert cols[-1] == "label"
    got = {Path(r["image"]).name: r["label"] for r in rows}
    assert got.pop("ct.dcm") == "normal" and got.pop("mr.dcm") == "pneumonia"
    assert set(got.values()) == {""}  # unlabelled files are kept
    printed = capsys.readouterr().out
    assert f"{len(got)} without a label" in printed and "1 labels without a file" in printed
    assert "1.2.3.4.5.6.7" in printed

    labels = tmp_path / "by_file.csv"
    labels.write_text("file,label\nct.dcm,normal\na/b/us_2frame,pneumonia\nnowhere.dcm,normal\n")
    out = tmp_path / "file.csv"
    assert index_dicom.main([str(tree), "--out", str(out), "--labels", str(labels), "--key", "file"]) == 0
    got = {Path(r["image"]).name: r["label"] for r in _read_csv(out)[1]}
    assert got["ct.dcm"] == "normal" and got["us_2frame"] == "pneumonia" and got["mr.dcm"] == ""


def test_index_dicom_pseudonymizes_consistently(tree, tmp_path, capsys):
    out = tmp_path / "pseudo.csv"
    assert index_dicom.main([str(tree), "--out", str(out), "--pseudonymize", "--salt", "s3cret"]) == 0
    rows = _read_csv(out)[1]
    mapping = {}
    for r in rows:
        original = str(pydicom.dcmread(out.parent / r["image"], stop_before_pixels=True).PatientID)
        assert re.fullmatch(r"[0-9a-f]{16}", r["patient_id"]) and r["patient_id"] != original
        assert mapping.setdefault(original, r["patient_id"]) == r["patient_id"]  # same patient -> same id
    assert len(set(mapping.values())) == len(mapping)  # different patients stay different
    assert max(Counter(r["patient_id"] for r in rows).values()) >= 2  # the demo patient with two images

    capsys.readouterr()
    assert index_dicom.main([str(tree), "--out", str(tmp_path / "x.csv"), "--pseudonymize"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--salt" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- audit
def test_audit_finds_a_duplicate_crossing_train_and_test(demo, tmp_path, capsys):
    fields, rows = _read_csv(demo / "labels.csv")
    src = next(r for r in rows if r["split"] == "train")
    shutil.copy(demo / src["image"], demo / "images" / "copy_of_one.dcm")
    (demo / "images" / "broken.dcm").write_bytes(b"\x00" * 300)
    rows.append({**src, "image": "images/copy_of_one.dcm", "patient_id": "PDUP", "split": "test"})
    readable = list(rows)
    rows.append({**src, "image": "images/broken.dcm", "patient_id": "PBROKEN"})
    manifest = _write_csv(demo / "audit_labels.csv", fields, rows)

    out = tmp_path / "audit"
    rc = audit.main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--out", str(out)])
    assert rc == 1  # a leak
    rep = json.loads((out / "audit.json").read_text())
    assert (out / "audit.md").read_text().startswith("# Data audit")
    assert rep["leak"] and rep["duplicate_groups_crossing"] == 1
    (dup,) = rep["duplicates"]
    assert {Path(m["image"]).name for m in dup["images"]} == {Path(src["image"]).name, "copy_of_one.dcm"}
    assert dup["crosses_train_test"] and "test" in dup["where"]
    assert rep["patients_in_multiple_folds"] == 0
    assert rep["label_counts"] == dict(Counter(r["label"] for r in readable))
    dev = Counter(r["label"] for r in readable if r["split"] == "train")
    val = Counter()
    for f in rep["label_counts_per_fold"]:
        val.update(f["val"])
    assert val == dev  # every development sample validated exactly once
    assert [Path(u["image"]).name for u in rep["unreadable"]] == ["broken.dcm"]
    assert rep["file_types"] == {"dicom": len(readable)}
    assert rep["patient_source"]["source"] == "column"
    printed = capsys.readouterr().out
    assert "LEAK FOUND" in printed and "broken.dcm" in printed


def test_audit_flags_identical_pixels_under_two_labels_without_calling_it_a_leak(demo, tmp_path, capsys):
    fields, rows = _read_csv(demo / "labels.csv")
    src = next(r for r in rows if r["split"] == "train")
    other = next(c for c in ("normal", "pneumonia") if c != src["label"])
    shutil.copy(demo / src["image"], demo / "images" / "relabelled.dcm")
    rows.append({**src, "image": "images/relabelled.dcm", "label": other})  # same patient, so not a leak
    manifest = _write_csv(demo / "relabelled.csv", fields, rows)

    out = tmp_path / "audit"
    rc = audit.main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--out", str(out)])
    rep = json.loads((out / "audit.json").read_text())
    assert rc == 1 and not rep["leak"]
    assert rep["duplicate_groups_conflicting_labels"] == 1
    (dup,) = rep["duplicates"]
    assert dup["labels"] == sorted({src["label"], other}) and not dup["crosses_folds"]
    assert {m["label"] for m in dup["images"]} == {src["label"], other}
    printed = capsys.readouterr().out
    assert "No leak found" in printed and "LABEL CONFLICT" in printed and "LABELS DIFFER" in printed


def test_audit_bad_config_is_a_user_error(capsys):
    assert audit.main(["--config", "smoke", "--set", "data.nope=1"]) == 2
    assert capsys.readouterr().err.startswith("error:")


# ---------------------------------------------------------------- preview
def test_preview_monochrome1_radiograph(tmp_path, capsys):
    png = tmp_path / "rg1.png"
    rc = preview.main([_testfile("RG1_UNCR.dcm"), "--config", "chest_xray",
                                  "--set", "data.image_size=64", "--png", str(png), "--json"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [1, 64, 64]
    assert info["inverted"] is True and info["voi_applied"] is True
    assert info["photometric"] == "MONOCHROME1" and info["modality"] == "CR" and info["frames"] == 1
    assert info["normalization"] == {"mean": [0.5], "std": [0.5]}
    assert -1.0 <= info["min"] < info["max"] <= 1.0
    img = np.asarray(Image.open(png), dtype=float)
    assert img.shape == (64, 64)
    # rows x cols of the 64 px output: both lungs either side of the mediastinum (air is dark once inverted)
    lungs = (img[16:32, 14:24].mean() + img[16:32, 40:50].mean()) / 2
    mediastinum = img[12:36, 29:35].mean()
    assert lungs + 40 < mediastinum


def test_preview_missing_file_is_a_user_error(tmp_path, capsys):
    assert preview.main([str(tmp_path / "missing.dcm")]) == 2
    assert capsys.readouterr().err.startswith("error:")


# ---------------------------------------------------------------- benchmark
def test_benchmark_decode(capsys):
    _testfile("RG1_J2KR.dcm")
    assert benchmark.main(["--what", "decode", "--seconds", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    for name in ("uncompressed", "rle", "jpeg2000"):
        assert out["decode"][name]["images_per_s"] > 0, out["decode"][name]
        assert out["decode"][name]["shape"] == [1955, 1841]
    assert out["decode"]["rle"]["transfer_syntax"] == "RLE Lossless"
    assert {"device", "torch", "threads"} <= set(out)
