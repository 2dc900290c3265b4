"""The synthetic demo data: deterministic, well-formed DICOM/NIfTI, manifests consistent with the files."""

import csv
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless

import pipeline.demo

SCALE = 0.1  # 15 chest patients (~30 images), 10 ultrasound patients (~12 studies)


@pytest.fixture(scope="module")
def mk():
    return pipeline.demo


@pytest.fixture(scope="module")
def demo(mk, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    manifests = mk.make_demo(root, seed=0, n_scale=SCALE)
    return root, manifests


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_runs_write_identical_bytes(mk, demo, tmp_path):
    root, _ = demo
    mk.make_demo(tmp_path, seed=0, n_scale=SCALE)
    first, second = _hashes(root), _hashes(tmp_path)
    assert len(first) > 40
    assert first == second
    other = tmp_path / "seed1"
    mk.make_demo(other, which="ultrasound", seed=1, n_scale=SCALE)
    assert _hashes(other) != {k: v for k, v in first.items() if k.startswith("ultrasound")}  # seed matters


def test_manifests_match_files_and_specs(mk, demo):
    root, manifests = demo
    assert set(manifests) == {"chest_xray", "ultrasound"}
    for name, make_specs, classes in (("chest_xray", mk.chest_specs, {"normal", "pneumonia"}),
                                      ("ultrasound", mk.us_specs, {"normal", "lesion"})):
        manifest = manifests[name]
        assert manifest == root / name / "labels.csv"
        with open(manifest, newline="") as f:
            assert next(csv.reader(f)) == ["image", "label", "patient_id", "split"]
        rows = _rows(manifest)
        specs = make_specs(0, SCALE)
        assert [r["image"] for r in rows] == [s["file"] for s in specs]
        assert {r["label"] for r in rows} == classes
        for r in rows:
            assert (manifest.parent / r["image"]).is_file()
        files = {str(p.relative_to(manifest.parent)) for p in (manifest.parent).rglob("*.*")
                 if p.name not in ("labels.csv", ".complete")}
        assert files == {r["image"] for r in rows}
        assert (root / name / ".complete").read_text() == mk._marker(0, SCALE)


def test_full_size_counts_and_patient_split(mk):
    # the specs are cheap (no pixels), so check the real proportions at full size
    chest, us = mk.chest_specs(0), mk.us_specs(0)
    assert 250 <= len(chest) <= 350 and len({s["patient_id"] for s in chest}) == 150
    assert 110 <= len(us) <= 130 and len({s["patient_id"] for s in us}) == 100
    n_pneu = sum(s["label"] == "pneumonia" for s in chest)
    assert 0.35 < n_pneu / len(chest) < 0.55
    assert sum(s["kind"] == "nifti" for s in us) == round(0.4 * len(us))
    for specs in (chest, us):
        patients = {}
        for s in specs:  # one label and one split per patient
            assert patients.setdefault(s["patient_id"], (s["label"], s["split"])) == (s["label"], s["split"])
        for lab in {lab for lab, _ in patients.values()}:
            split = [sp for lb, sp in patients.values() if lb == lab]
            assert abs(split.count("test") / len(split) - 0.2) < 0.03


def test_small_split_is_whole_patients(demo):
    root, manifests = demo
    for manifest in manifests.values():
        rows = _rows(manifest)
        split = {}
        for r in rows:
            assert r["split"] in ("train", "test")
            assert split.setdefault(r["patient_id"], r["split"]) == r["split"]
        for lab in {r["label"] for r in rows}:  # every class has patients in both splits
            assert {r["split"] for r in rows if r["label"] == lab} == {"train", "test"}


def test_chest_dicom_headers(demo):
    root, manifests = demo
    seen = {"photometric": set(), "modality": set(), "slope": set(), "shape": set(), "syntax": set()}
    for r in _rows(manifests["chest_xray"]):
        ds = pydicom.dcmread(root / "chest_xray" / r["image"])
        assert ds.PatientID == r["patient_id"]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        assert ds.SOPClassUID == {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[ds.Modality]
        arr = ds.pixel_array
        assert arr.dtype == np.uint16 and arr.max() <= 4095 and arr.shape == (ds.Rows, ds.Columns)
        assert float(ds.WindowWidth) > 0 and len(ds.PixelSpacing) == 2
        for key, val in (("photometric", ds.PhotometricInterpretation), ("modality", ds.Modality),
                         ("slope", float(ds.RescaleSlope)), ("shape", arr.shape),
                         ("syntax", ds.file_meta.TransferSyntaxUID)):
            seen[key].add(val)
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["modality"] == {"CR", "DX"} and seen["slope"] == {0.5, 1.0}
    assert any(r != c for r, c in seen["shape"]) and len(seen["shape"]) >= 2
    assert RLELossless in seen["syntax"] and len(seen["syntax"]) == 2


def _box_mean(img, S, cx, cy, half=0.05):
    H, W = img.shape
    r0, r1 = int(H / 2 + (cy - half) * S), int(H / 2 + (cy + half) * S)
    c0, c1 = int(W / 2 + (cx - half) * S), int(W / 2 + (cx + half) * S)
    return img[r0:r1, c0:c1].mean()


def test_displayed_chest_has_dark_lungs_and_bright_mediastinum(demo):
    """Viewer pipeline (modality LUT, VOI window, invert MONOCHROME1) must show lungs darker than mediastinum."""
    root, manifests = demo
    n_mono1 = 0
    for r in _rows(manifests["chest_xray"]):
        ds = pydicom.dcmread(root / "chest_xray" / r["image"])
        img = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            img = img.max() + img.min() - img
            n_mono1 += 1
        S = min(img.shape) / 2  # the generator's unit: half the short side
        lungs = [_box_mean(img, S, cx, -0.15) for cx in (-0.36, 0.36)]
        mediastinum = _box_mean(img, S, 0.0, -0.35, half=0.03)
        air = img[:8, :8].mean()  # corner outside the body (the lead marker sits further in)
        assert max(lungs) < mediastinum - 0.1 * (img.max() - img.min()), r["image"]
        assert air < min(lungs), r["image"]
    assert n_mono1 >= 3


def test_rle_files_decode_to_the_intended_pixels(mk, demo):
    root, _ = demo
    specs = mk.chest_specs(0, SCALE)
    rle = [s for s in specs if s["rle"]]
    assert rle
    for s in rle + [s for s in specs if not s["rle"]][:2]:
        ds = pydicom.dcmread(root / "chest_xray" / s["file"])
        assert (ds.file_meta.TransferSyntaxUID == RLELossless) == s["rle"]
        assert np.array_equal(ds.pixel_array, mk.chest_stored(s)[0])


def test_ultrasound_dicoms(mk, demo):
    root, manifests = demo
    specs = {s["file"]: s for s in mk.us_specs(0, SCALE)}
    kinds = set()
    for r in _rows(manifests["ultrasound"]):
        if not r["image"].endswith(".dcm"):
            continue
        ds = pydicom.dcmread(root / "ultrasound" / r["image"])
        spec = specs[r["image"]]
        kinds.add(ds.PhotometricInterpretation)
        assert ds.PatientID == r["patient_id"] and ds.Modality == "US"
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.3.1"
        assert int(ds.NumberOfFrames) == spec["n_frames"] and 4 <= spec["n_frames"] <= 6
        assert float(ds.FrameTime) > 0 and ds.BitsStored == 8
        arr = ds.pixel_array  # pydicom converts YBR_FULL to RGB by default
        reg = ds.SequenceOfUltrasoundRegions[0]
        assert (reg.RegionSpatialFormat, reg.RegionDataType) == (1, 1)
        assert reg.PhysicalUnitsXDirection == reg.PhysicalUnitsYDirection == 3 and reg.PhysicalDeltaX > 0
        x0, y0, x1, y1 = reg.RegionLocationMinX0, reg.RegionLocationMinY0, reg.RegionLocationMaxX1, reg.RegionLocationMaxY1
        assert 0 <= x0 < x1 < ds.Columns and 0 <= y0 < y1 < ds.Rows
        frames, region = mk.render_us(spec)
        if ds.PhotometricInterpretation == "MONOCHROME2":
            assert arr.shape == (spec["n_frames"], 240, 320) and np.array_equal(arr, frames)
        else:
            assert ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 0
            assert arr.shape == (spec["n_frames"], 240, 320, 3)
            if ds.PhotometricInterpretation == "RGB":
                assert np.array_equal(arr, frames)
            else:  # YBR_FULL round trip is lossy by a grey level or so
                assert np.abs(arr.astype(int) - frames).max() <= 3
            colour = np.abs(arr[0].astype(int)[..., 0] - arr[0].astype(int)[..., 2]) > 60
            assert colour[region].any() and colour[~region].any()  # overlay inside and outside the image
        gray = arr[0] if arr.ndim == 3 else arr[0, ..., 1]
        assert gray[region].mean() > 40  # tissue inside the region, bright enough to see
        assert (gray[~region] > 0).mean() < 0.1  # mostly black outside, with a little burned-in text
        assert (gray[~region] > 0).any()
        assert region[y0:y1 + 1, x0:x1 + 1].mean() > 0.5 and not region[:y0].any() and not region[:, x1 + 1:].any()
        box = np.zeros_like(region)
        box[y0:y1 + 1, x0:x1 + 1] = True
        lit = arr[0] > 0 if arr.ndim == 3 else (arr[0] > 0).any(axis=-1)
        assert lit[box & ~region].sum() <= 0.005 * box.sum()  # burned-in text/scales sit outside the region's box
    assert kinds == {"MONOCHROME2", "RGB", "YBR_FULL"}


def test_ultrasound_nifti_layout(mk, demo):
    """Documented storage: (X, Y, T); nib.as_closest_canonical, data[:, :, k].T, flip up-down = frame k."""
    root, _ = demo
    nii = [s for s in mk.us_specs(0, SCALE) if s["kind"] == "nifti"]
    assert nii
    for s in nii:
        img = nib.as_closest_canonical(nib.load(root / "ultrasound" / s["file"]))
        data = np.asarray(img.dataobj)
        assert data.shape == (320, 240, s["n_frames"]) and data.dtype == np.uint8
        frames, _ = mk.render_us(s)
        for k in range(s["n_frames"]):
            assert np.array_equal(np.flipud(data[:, :, k].T), frames[k])
        assert img.header.get_zooms()[0] > 0


def test_frames_move_but_stay_similar(mk):
    s = next(s for s in mk.us_specs(0, SCALE) if s["label"] == "lesion")
    frames, region = mk.render_us(s)
    a, b = frames[0][region].astype(float), frames[1][region].astype(float)
    assert not np.array_equal(a, b)
    assert np.corrcoef(a, b)[0, 1] > 0.2


def test_skip_when_complete_and_rewrite_when_partial(mk, tmp_path):
    manifest = mk.make_demo(tmp_path, which="chest_xray", n_scale=0.04)["chest_xray"]
    first = next((tmp_path / "chest_xray" / "images").iterdir())
    stamp = first.stat().st_mtime_ns
    mk.make_demo(tmp_path, which="chest_xray", n_scale=0.04)
    assert first.stat().st_mtime_ns == stamp  # complete: left alone
    (tmp_path / "chest_xray" / ".complete").unlink()
    stray = tmp_path / "chest_xray" / "images" / "stray.dcm"
    stray.write_bytes(b"partial")
    mk.make_demo(tmp_path, which="chest_xray", n_scale=0.04)
    assert not stray.exists() and manifest.is_file() and (tmp_path / "chest_xray" / ".complete").is_file()
    with pytest.raises(ValueError, match="unknown demo"):
        mk.make_demo(tmp_path, which="mri")


def test_cli(mk, tmp_path, capsys):
    assert mk.main(["--root", str(tmp_path), "--only", "ultrasound", "--scale", "0.06"]) == 0
    assert (tmp_path / "ultrasound" / "labels.csv").is_file() and not (tmp_path / "chest_xray").exists()
    assert mk.main(["--root", str(tmp_path), "--only", "ultrasound", "--scale", "0.06"]) == 0
    assert "already complete" in capsys.readouterr().out
