"""Fault injection: one case per row of the table "When input is bad" (docs/faults_and_privacy.md).

Every case runs the real command line in-process (`--dry-run` on the smoke config) on a tiny demo manifest with
one faulty row added, made of real files (pydicom, nibabel, Pillow; no mocked formats), and asserts either a
one-line error (row / file / key named, exit code 2, no traceback, the reader's own reason) or a recorded skip
with the run completing.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.demo import make_demo

FIELDS = ["image", "label", "patient_id", "split"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    make_demo(root, which=("chest_xray",), n_scale=0.1)
    labels = root / "chest_xray" / "labels.csv"
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["image"] = str((labels.parent / r["image"]).resolve())
    return {"root": root, "rows": rows, "dcm": rows[0]["image"]}


def _write(path: Path, rows: list[dict], sep: str = ",", bom: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS, delimiter=sep)
        w.writeheader()
        w.writerows(rows)
    return path


# ---- real faulty files -------------------------------------------------------------------------------------
def truncated_dicom(d, dst):
    data = Path(d["dcm"]).read_bytes()
    dst.write_bytes(data[: len(data) - len(data) // 3])  # header complete, pixels cut


def dicom_without_pixels(d, dst):
    ds = pydicom.dcmread(d["dcm"])
    del ds.PixelData
    ds.save_as(dst)


def dicom_unknown_syntax(d, dst):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    ds = pydicom.dcmread(d["dcm"])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # no pydicom decoder exists for video syntaxes
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.save_as(dst)


def zero_bytes(d, dst):
    dst.write_bytes(b"")


def text_named_dcm(d, dst):
    dst.write_text("patient,notes\n1,this is not an image\n")


def png_named_dcm(d, dst):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(dst, format="PNG")


def nifti_4d(d, dst):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 40, 4, 3), dtype=np.float32), np.eye(4)), dst)


def nifti_nan(d, dst):
    arr = np.random.default_rng(0).random((48, 48), dtype=np.float32)
    arr[3:9, 3:9] = np.nan
    arr[10, 10] = np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), dst)


def png_shape(shape, value=None):
    def make(d, dst):
        arr = np.full(shape, value, np.uint8) if value is not None else \
            np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        Image.fromarray(arr).save(dst)
    return make


def png_16bit(d, dst):
    arr = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr).save(dst)


def folder(d, dst):
    dst.mkdir()


def flipped_demo(d, dst):
    ds = pydicom.dcmread(d["dcm"])
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).tobytes()  # other pixels: not a copy (a leak)
    ds.save_as(dst)


def missing(d, dst):
    pass


# (id, file maker, file name, outcome, expected text). outcome: error (exit 2, one line naming the row) | ok
FILE_CASES = [
    ("truncated_dicom", truncated_dicom, "cut.dcm", "error", "pixel data is less than expected"),
    ("dicom_without_pixeldata", dicom_without_pixels, "nopix.dcm", "error", "no PixelData"),
    ("unsupported_transfer_syntax", dicom_unknown_syntax, "mpeg.dcm", "error", "no installed decoder handles"),
    ("zero_byte_file", zero_bytes, "empty.dcm", "error", "empty file (0 bytes)"),
    ("text_named_dcm", text_named_dcm, "notes.dcm", "error", "not a DICOM image (no DICM prefix)"),
    ("png_named_dcm", png_named_dcm, "photo.dcm", "ok", ""),
    ("nifti_4d", nifti_4d, "vol4d.nii.gz", "error", "non-singleton dimensions"),
    ("nifti_nan_inf", nifti_nan, "nan.nii.gz", "error", "pixels are NaN or infinite"),
    ("image_1x1", png_shape((1, 1)), "dot.png", "error", "smaller than data.min_size=32"),
    ("image_5x4000", png_shape((5, 4000)), "strip.png", "error", "smaller than data.min_size=32"),
    ("constant_image", png_shape((64, 64), 128), "flat.png", "error", "constant image"),
    ("png_16bit", png_16bit, "deep.png", "ok", ""),
    ("path_is_a_folder", folder, "dir.dcm", "error", "not a regular file"),
    ("spaces_and_non_ascii", flipped_demo, "Patient Müller ü 1.dcm", "ok", ""),
    ("missing_file", missing, "gone.dcm", "error", "image not found"),
]
BROKEN_DICOM = {"truncated_dicom", "dicom_without_pixeldata", "unsupported_transfer_syntax", "zero_byte_file",
                "text_named_dcm", "path_is_a_folder"}


def _run(manifest: Path, out: Path, *extra: str) -> int:
    return main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--output-dir", str(out),
                 "--dry-run", "--quiet", *extra])


def _one_line_error(capsys, rc) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "applying transform" not in err and "object at 0x" not in err
    return lines[0]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file(case, demo, tmp_path, capsys):
    name, make, fname, outcome, text = case
    bad = tmp_path / fname
    make(demo, bad)
    rows = demo["rows"] + [{"image": str(bad), "label": "normal", "patient_id": "PBAD", "split": "train"}]
    manifest = _write(tmp_path / "labels.csv", rows)
    row = len(rows) + 1  # line 1 is the header
    rc = _run(manifest, tmp_path / "run")
    if outcome == "ok":
        assert rc == 0, capsys.readouterr().err
        return
    line = _one_line_error(capsys, rc)
    assert f"labels.csv row {row}" in line and text in line and str(bad) in line
    assert not (tmp_path / "run").exists()  # a failed start leaves no run folder behind

    # on_error: skip records the same reason and the row, and the run goes on
    rc = _run(manifest, tmp_path / "run_skip", "--set", "data.on_error=skip")
    assert rc == 0, capsys.readouterr().err
    skipped = list(csv.DictReader((tmp_path / "run_skip" / "skipped.csv").open()))
    assert [s["row"] for s in skipped] == [str(row)]
    assert text in skipped[0]["reason"] and "applying transform" not in skipped[0]["reason"]


def _table_case(demo, tmp_path, name):
    rows = [dict(r) for r in demo["rows"]]
    first = rows[0]
    if name == "duplicate_rows":
        rows.append(dict(first))
    elif name == "conflicting_labels":
        copy = tmp_path / "copy.dcm"
        shutil.copyfile(first["image"], copy)
        other = "pneumonia" if first["label"] == "normal" else "normal"
        rows.append({**first, "image": str(copy), "label": other})
    elif name == "label_outside_classes":
        rows.append({**first, "label": "covid"})
    elif name == "same_file_two_patients":
        rows.append({**first, "patient_id": "POTHER"})
    elif name == "same_pixels_two_patients":
        copy = tmp_path / "copy.dcm"
        shutil.copyfile(first["image"], copy)
        rows.append({**first, "image": str(copy), "patient_id": "POTHER"})
    elif name == "class_in_one_patient":  # a validation fold could not hold the class
        keep = next(r["patient_id"] for r in rows if r["label"] == "pneumonia")
        rows = [r for r in rows if r["label"] == "normal" or r["patient_id"] == keep]
    return rows


TABLE_CASES = [
    ("duplicate_rows", "warn", "duplicate manifest rows"),
    ("conflicting_labels", "warn", "conflicting labels"),
    ("label_outside_classes", "error", "label 'covid' is not one of task.classes"),
    ("same_file_two_patients", "error", "the same file is listed under patients"),
    ("same_pixels_two_patients", "error", "same pixels as row"),
    ("class_in_one_patient", "error", "need at least 2 patients per class"),
]


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_bad_rows(case, demo, tmp_path, capsys):
    name, outcome, text = case
    rows = _table_case(demo, tmp_path, name)
    manifest = _write(tmp_path / "labels.csv", rows)
    rc = _run(manifest, tmp_path / "run")
    if outcome == "warn":
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        assert text in captured.out  # a warning line before training
        rc = _run(manifest, tmp_path / "run2", "--set", "data.duplicates=error")
        assert text in _one_line_error(capsys, rc)
        return
    assert text in _one_line_error(capsys, rc)


@pytest.mark.parametrize("variant", ["empty_manifest", "header_only", "bom", "semicolons"])
def test_manifest_text(variant, demo, tmp_path, capsys):
    path = tmp_path / "labels.csv"
    if variant == "empty_manifest":
        path.write_text("")
    elif variant == "header_only":
        _write(path, [])
    else:
        _write(path, demo["rows"], sep=";" if variant == "semicolons" else ",", bom=variant == "bom")
    rc = _run(path, tmp_path / "run")
    if variant in ("bom", "semicolons"):
        assert rc == 0, capsys.readouterr().err
        return
    line = _one_line_error(capsys, rc)
    assert "labels.csv" in line and ("empty" in line or "no rows" in line)


def test_skip_that_empties_a_class(demo, tmp_path, capsys):
    junk = tmp_path / "junk.dcm"
    junk.write_text("not an image")
    rows = [{**r, "image": str(junk)} if r["label"] == "pneumonia" else r for r in demo["rows"]]
    rc = _run(_write(tmp_path / "labels.csv", rows), tmp_path / "run", "--set", "data.on_error=skip")
    line = _one_line_error(capsys, rc)
    assert "class 'pneumonia' has no readable samples" in line and "skipped" in line
    # kept for its skipped.csv, and marked failed
    assert (tmp_path / "run" / "skipped.csv").is_file() and (tmp_path / "run" / "FAILED.txt").is_file()


def test_skip_that_empties_a_fold(demo, tmp_path, capsys):
    junk = tmp_path / "junk.dcm"
    junk.write_text("not an image")
    keep = next(r["patient_id"] for r in demo["rows"] if r["label"] == "pneumonia")
    rows = [{**r, "image": str(junk)} if r["label"] == "pneumonia" and r["patient_id"] != keep else r
            for r in demo["rows"]]
    rc = _run(_write(tmp_path / "labels.csv", rows), tmp_path / "run", "--set", "data.on_error=skip")
    assert "need at least 2 patients per class" in _one_line_error(capsys, rc)


def test_validation_fold_without_a_class_is_refused(demo):
    """The fold check itself (a saved splits.json, or any split that leaves a class out of a fold)."""
    from pipeline.config import load_config
    from pipeline.data.checks import check_folds
    from pipeline.data.cv import Fold, Splits
    from pipeline.data.manifest import Sample
    from pipeline.errors import DataError

    cfg = load_config("smoke", [])
    samples = [Sample(f"/x/{p}", p, t, ("normal", "pneumonia")[t], p, True, None, None, i + 2)
               for i, (p, t) in enumerate([("a", 0), ("b", 1), ("c", 0), ("d", 0)])]
    splits = Splits(folds=(Fold(0, ("c", "d"), ("a", "b")), Fold(1, ("a", "b"), ("c", "d"))), test_patients=(),
                    seed=0)
    with pytest.raises(DataError, match="fold 1's validation set has no 'pneumonia'"):
        check_folds(cfg, samples, splits)


def test_memory_guard(demo, tmp_path, capsys, monkeypatch):
    from pipeline.data import checks

    monkeypatch.setattr(checks, "_available_memory", lambda: 1000)
    rc = _run(_write(tmp_path / "labels.csv", demo["rows"]), tmp_path / "run")
    assert "data.cache: disk" in _one_line_error(capsys, rc)


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    import torch

    from pipeline.errors import PipelineError
    from pipeline.runfolder import RunFolder

    def full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "fold_0" / "best.pt"
    with pytest.raises(PipelineError, match="disk full") as exc:
        RunFolder.save_torch({"x": 1}, target)
    assert str(target) in str(exc.value)
    assert list(target.parent.iterdir()) == []  # no half-written file


def test_bad_row_in_a_5000_row_manifest_is_found_in_seconds(demo, tmp_path, capsys):
    """Header checks run before any pixel is decoded: a bad last row is reported within the issue's 30 s."""
    links = tmp_path / "links"
    links.mkdir()
    rows = []
    for i in range(4999):
        src = demo["rows"][i % len(demo["rows"])]
        dst = links / f"im{i}.dcm"
        os.link(src["image"], dst)
        rows.append({"image": str(dst), "label": src["label"], "patient_id": f"Q{i}", "split": "train"})
    bad = tmp_path / "nopix.dcm"
    dicom_without_pixels(demo, bad)
    rows.append({"image": str(bad), "label": "normal", "patient_id": "QBAD", "split": "train"})
    manifest = _write(tmp_path / "labels.csv", rows)
    t0 = time.perf_counter()
    rc = _run(manifest, tmp_path / "run")
    elapsed = time.perf_counter() - t0
    line = _one_line_error(capsys, rc)
    assert "labels.csv row 5001" in line and "no PixelData" in line
    assert elapsed < 30, f"{elapsed:.1f}s"


# ---- predict: the same reasons, good files still scored ---------------------------------------------------
@pytest.fixture
def trained(smoke_run):
    return smoke_run


def test_predict_skips_bad_files_with_the_readers_reason(trained, demo, tmp_path, capsys):
    from pipeline.tools.predict import main as predict_main

    cases = [c for c in FILE_CASES if c[0] in BROKEN_DICOM or c[0] == "nifti_nan_inf"]
    bad = []
    for _name, make, fname, _, text in cases:
        path = tmp_path / fname
        make(demo, path)
        bad.append((path, text))
    good = [r["image"] for r in demo["rows"][:3]]
    out = tmp_path / "pred.csv"
    rc = predict_main([str(trained), *good, *(str(p) for p, _ in bad), "--on-error", "skip", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    scored = list(csv.DictReader(out.open()))
    assert [r["image"] for r in scored] == good
    for path, text in bad:
        line = next(x for x in err.splitlines() if str(path) in x)
        assert text in line and "applying transform" not in line
    rc = predict_main([str(trained), *good, str(bad[0][0])])
    assert bad[0][1] in _one_line_error(capsys, rc)


def test_nan_loss_names_fold_stage_epoch_and_keeps_finished_folds(demo, tmp_path, capsys, monkeypatch):
    import torch

    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.train import run as run_module

    real = run_module.make_loss
    calls = {"folds": 0}

    def make_loss(*a, **k):
        calls["folds"] += 1
        fn = real(*a, **k)
        if calls["folds"] == 1:
            return fn
        return lambda logits, y: fn(logits, y) * torch.tensor(float("nan"))  # fold 1 diverges

    monkeypatch.setattr(run_module, "make_loss", make_loss)
    out = tmp_path / "run"
    rc = main(["--config", "smoke", "--set", f"data.manifest={_write(tmp_path / 'labels.csv', demo['rows'])}",
               "--set", "report.bootstrap=0", "--output-dir", str(out), "--quiet"])
    line = _one_line_error(capsys, rc)
    assert "fold 1, stage 'head', epoch 1" in line and "step 1" in line and "fp32" in line
    assert (out / "fold_0" / "result.json").is_file()
    assert load_checkpoint(out / "fold_0" / "best.pt").fold == 0  # the finished fold stays usable


@pytest.mark.parametrize("name", ["same_file_two_patients", "same_pixels_two_patients"])
def test_audit_reports_the_leak_with_exit_code_1(name, demo, tmp_path, capsys):
    from pipeline.tools.audit import main as audit_main

    manifest = _write(tmp_path / "labels.csv", _table_case(demo, tmp_path, name))
    rc = audit_main(["--config", "smoke", "--set", f"data.manifest={manifest}", "--out", str(tmp_path / "audit")])
    assert rc == 1 and "LEAK FOUND" in capsys.readouterr().out


def test_after_decode_groups_copies_by_pixels_and_warns_of_a_copy_under_another_label(graystem_warnings):
    from pipeline.config import load_config
    from pipeline.data.cache import MemoryStore
    from pipeline.data.checks import after_decode
    from pipeline.data.datasets import Decoded
    from pipeline.data.manifest import Sample

    def sample(name, patient, known, label):
        return Sample(image=name, image_text=name, target=int(label == "pneumonia"), label=label,
                      patient_id=patient, patient_known=known, split=None, frame=None, row=2)

    a = np.arange(64, dtype=np.uint16).reshape(8, 8)
    samples = (sample("a.png", "P1", True, "normal"),
               sample("copy.png", "copy.png", False, "normal"),      # no id: joins P1, the copy's patient
               sample("relabelled.png", "P1", True, "pneumonia"),    # P1 again, under the other label
               sample("reshaped.png", "P4", True, "pneumonia"))      # the same bytes as 4x16: another image
    pixels = [a, a.copy(), a.copy(), a.reshape(4, 16).copy()]
    out = after_decode(load_config("smoke"), Decoded(samples, MemoryStore(pixels), ()), 0)
    assert [s.patient_id for s in out.samples] == ["P1", "P1", "P1", "P4"]
    text = "\n".join(graystem_warnings)
    assert "1 images without a patient id repeat" in text
    assert "1 images repeat another image's pixels exactly under a different label" in text
