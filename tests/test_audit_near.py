"""`graystem audit` writes near_duplicates.csv and near_duplicates.png from real written copies."""

import csv

from PIL import Image

from pipeline.tools.audit import main
from pipeline.tools.near_copies import write_copy


def test_audit_lists_near_copies(tmp_path):
    from skimage import data

    rows = [("camera.png", "normal"), ("coins.png", "pneumonia"), ("moon.png", "normal"), ("page.png", "pneumonia")]
    Image.fromarray(data.camera()).save(tmp_path / "camera.png")
    Image.fromarray(data.coins()).save(tmp_path / "coins.png")
    Image.fromarray(data.moon()).save(tmp_path / "moon.png")
    Image.fromarray(data.page()).save(tmp_path / "page.png")
    copy = write_copy(Image.fromarray(data.camera()), "jpeg_q60", tmp_path / "camera_again")
    rows.append((copy.name, "pneumonia"))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    out = tmp_path / "audit"
    main(["--config", "smoke", "--set", f"data.manifest={tmp_path / 'labels.csv'}", "--set", "data.demo=null",
          "--set", "data.near_duplicates=group", "--set", "data.image_size=128", "--out", str(out)])
    got = list(csv.DictReader((out / "near_duplicates.csv").open()))
    assert [(r["group"], r["image"], r["label"], r["distance"]) for r in got][0] == ("1", "camera.png", "normal", "0")
    assert [(r["group"], r["image"], r["label"]) for r in got][1:] == [("1", "camera_again.jpg", "pneumonia")]
    assert 0 <= int(got[1]["distance"]) <= 48
    assert Image.open(out / "near_duplicates.png").size[0] > 100
