"""`graystem evaluate` on a manifest that is not external to the run: shared files, pixels or patients."""

import csv
import json

import numpy as np
from PIL import Image

from pipeline.io import read_gray
from pipeline.tools.evaluate import main as evaluate_main


def _clean_images(folder):
    """Real photographs: nothing like the run's chest films."""
    from skimage import data

    names = []
    for k, img in enumerate((data.camera(), data.coins(), data.moon(), data.page())):
        name = f"photo{k}.png"
        Image.fromarray(img).save(folder / name)
        names.append(name)
    return names


def _write(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    return path


def _evaluate(run, manifest, out, *extra):
    return evaluate_main([str(run), "--manifest", str(manifest), "--out", str(out), "--quiet", *extra])


def test_overlap_by_path_pixels_and_patient(smoke_run, small_chest, tmp_path, capsys):
    names = _clean_images(tmp_path)
    clean = [{"image": n, "label": ["normal", "pneumonia"][k % 2], "patient_id": f"EXT{k}"}
             for k, n in enumerate(names)]
    dev = list(csv.DictReader(small_chest.open()))
    # a copy of one of the run's DICOMs, exported as an 8-bit PNG under a new name and a new patient
    pixels, _ = read_gray(str(small_chest.parent / dev[0]["image"]))
    pixels = ((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "export.png")
    path_row = {"image": str(small_chest.parent / dev[1]["image"]), "label": dev[1]["label"], "patient_id": "EXT9"}
    pixel_row = {"image": "export.png", "label": dev[0]["label"], "patient_id": "EXT8"}
    patient_row = dict(clean[-1], patient_id=dev[2]["patient_id"])
    # one manifest with one row of each kind: the one line names all three
    mixed = _write(tmp_path / "mixed.csv", clean[:-1] + [path_row, pixel_row, patient_row])
    rc = _evaluate(smoke_run, mixed, tmp_path / "ev_mixed")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: this manifest is not external to run smoke: "), err
    assert "1 images are files of the run's data" in err[0]
    assert "2 images repeat the pixels of the run's images" in err[0]  # the copied file and the export
    assert f"1 patient ids are the run's (e.g. {dev[2]['patient_id']})" in err[0]
    assert not (tmp_path / "ev_mixed" / "summary.json").exists()  # nothing scored

    assert _evaluate(smoke_run, _write(tmp_path / "clean.csv", clean), tmp_path / "ev_clean") == 0
    _write(tmp_path / "pixels.csv", clean + [pixel_row])
    # --allow-overlap scores it anyway, marked in summary.json and report.md
    assert _evaluate(smoke_run, tmp_path / "pixels.csv", tmp_path / "ev_allowed", "--allow-overlap") == 0
    summary = json.loads((tmp_path / "ev_allowed" / "summary.json").read_text())
    assert summary["overlap"]["external"] is False and summary["overlap"]["allowed"] is True
    assert [(p["image"], p["run_image"]) for p in summary["overlap"]["by_pixels"]] == [("export.png", dev[0]["image"])]
    assert "NOT external" in (tmp_path / "ev_allowed" / "report.md").read_text().splitlines()[0]
    clean_summary = json.loads((tmp_path / "ev_clean" / "summary.json").read_text())
    assert clean_summary["overlap"]["external"] is True
