"""`graystem prepare`: tiny copies of each public set in its published layout and column names (written here,
a few real PNG/JPEG/DICOM files each), and the manifests the adapters make of them."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pipeline.cli import main as train_main
from pipeline.commands import main as graystem
from pipeline.tools.prepare_dataset import main as prepare

RNG = np.random.default_rng(0)


def png(path: Path, size=(40, 36), seed=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def dicom(path: Path, patient_id: str, sex="F", age="045Y", view="PA", seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientSex, ds.PatientAge, ds.ViewPosition = "CR", patient_id, sex, age, view
    ds.Rows, ds.Columns = 40, 36
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (40, 36), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_csv(path: Path, header: list[str], rows: list[list], gz=False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(f'"{c}"' if "," in str(c) else str(c) for c in r) for r in [header, *rows]]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def run(capsys, *args) -> tuple[list[dict], list[dict], str]:
    out = Path(args[args.index("--out") + 1])
    assert graystem(["prepare", *map(str, args)]) == 0  # as `graystem prepare ...` runs it
    text = capsys.readouterr().out
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    with (out / "left_out.csv").open() as fh:
        left = list(csv.DictReader(fh))
    return rows, left, text


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in rows}


def dry_run(capsys, config: str, manifest: Path, run: Path, *sets: str) -> str:
    args = ["--config", config, "--set", f"data.manifest={manifest}", "--set", "data.demo=null",
            "--set", "data.image_size=32", "--set", "cv.folds=2",
            "--set", "train.progress=false", *[x for s in sets for x in ("--set", s)], "--output-dir", str(run),
            "--dry-run"]
    assert train_main(args) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    return captured.out + captured.err


# --- MedMNIST -----------------------------------------------------------------------------------------------------

def test_medmnist_pngs_splits_copies_and_a_dry_run_at_28_px(tmp_path, capsys):
    imgs = {k: RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8) for k, n in (("train", 12), ("val", 4), ("test", 6))}
    imgs["train"][5] = imgs["train"][2]  # an exact copy inside the pool
    imgs["test"][0] = imgs["train"][7]  # a copy across the official split
    labels = {k: (np.arange(len(v)) % 2).reshape(-1, 1).astype(np.uint8) for k, v in imgs.items()}
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, **{f"{k}_images": v for k, v in imgs.items()}, **{f"{k}_labels": v for k, v in labels.items()})
    out = tmp_path / "mm"
    rows, left, text = run(capsys, "medmnist", npz, "--out", out)
    assert len(rows) == 21 and [x["image"] for x in left] == ["images/test/test_00000.png"]
    assert "leak across the official split" in left[0]["reason"]
    r = by_name(rows)
    assert r["train_00003.png"]["label"] == "pneumonia" and r["val_00002.png"]["label"] == "normal"
    assert {x["split"] for x in rows if x["image"].startswith("images/test/")} == {"test"}
    assert {x["split"] for x in rows if "/val/" in x["image"]} == {"train"}
    assert all(x["patient_id"] == "" for x in rows)
    assert np.array_equal(np.asarray(Image.open(out / "images/val/val_00003.png")), imgs["val"][3])
    assert "1 images repeat another image's pixels exactly (1 groups" in text
    assert "no patient ids" in text
    # the medmnist config takes 28-px images as they are; the chest config's min_size=32 refuses them
    done = dry_run(capsys, "medmnist", out / "manifest.csv", tmp_path / "run")
    assert "dry run: config and data are valid; 21 samples" in done and "5 test samples" in done
    assert "1 images without a patient id repeat another image's pixels exactly" in done
    assert train_main(["--config", "chest_xray", "--set", f"data.manifest={out / 'manifest.csv'}", "--set",
                       "data.demo=null", "--output-dir", str(tmp_path / "chest"), "--dry-run"]) == 2
    assert "data.min_size=32" in capsys.readouterr().err


def test_medmnist_multilabel_chestmnist(tmp_path, capsys):
    imgs = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    lab = np.zeros((3, 14), np.uint8)
    lab[1, [0, 6]] = 1
    np.savez(tmp_path / "chestmnist.npz", **{f"{k}_images": imgs for k in ("train", "val", "test")},
             **{f"{k}_labels": lab for k in ("train", "val", "test")})
    rows, left, text = run(capsys, "medmnist", tmp_path / "chestmnist.npz", "--out", tmp_path / "c")
    # the val and test copies of the same three images: val joins the pool's copies, test ones are left out
    assert len(rows) == 6 and len(left) == 3
    r = by_name(rows)["train_00001.png"]
    assert (r["atelectasis"], r["pneumonia"], r["hernia"]) == ("1", "1", "0")


# --- NIH ChestX-ray14 ---------------------------------------------------------------------------------------------

NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


@pytest.fixture
def nih(tmp_path) -> Path:
    src = tmp_path / "nih"
    entries = [("00000001_000.png", "Cardiomegaly|Effusion", 0, 1, 58, "M", "PA"),
               ("00000001_001.png", "No Finding", 1, 1, 58, "M", "AP"),
               ("00000002_000.png", "Pneumonia", 0, 2, 81, "F", "PA"),
               ("00000003_000.png", "Infiltration|Pneumonia", 0, 3, 33, "F", "AP"),
               ("00000004_000.png", "No Finding", 0, 4, 40, "M", "PA"),
               ("00000005_000.png", "Mass", 0, 5, 60, "F", "PA")]
    for i, e in enumerate(entries[:4]):
        png(src / "images_001" / "images" / e[0], seed=i)
    png(src / "images_002" / "images" / entries[5][0], seed=9)  # 00000004_000.png is missing
    png(src / "images_002" / "images" / "00000099_000.png", seed=10)  # no row in the label file
    write_csv(src / "Data_Entry_2017_v2020.csv", NIH_HEADER, [[*e, 2048, 2500, 0.168, 0.168] for e in entries])
    (src / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000004_000.png\n00000005_000.png\n")
    (src / "test_list.txt").write_text("00000002_000.png\n00000003_000.png\n")
    return src


def test_nih_multilabel_patients_official_split_missing_and_unlabelled(nih, tmp_path, capsys):
    rows, left, text = run(capsys, "nih-cxr14", nih, "--out", tmp_path / "o")
    r = by_name(rows)
    assert len(rows) == 5
    assert (r["00000001_000.png"]["Cardiomegaly"], r["00000001_000.png"]["Effusion"],
            r["00000001_000.png"]["Pneumonia"]) == ("1", "1", "0")
    assert r["00000001_001.png"]["patient_id"] == r["00000001_000.png"]["patient_id"] == "1"
    assert [r[n]["split"] for n in sorted(r)] == ["train", "train", "test", "test", "train"]
    assert (r["00000002_000.png"]["view_position"], r["00000002_000.png"]["patient_sex"],
            r["00000002_000.png"]["patient_age"]) == ("PA", "F", "81")
    reasons = {Path(x["image"]).name: x["reason"] for x in left}
    assert reasons == {"00000004_000.png": "named in Data_Entry_2017_v2020.csv but the file is missing",
                       "00000099_000.png": "no row in Data_Entry_2017_v2020.csv"}
    assert "patients: 4" in text and "left out: 2" in text


def test_nih_one_finding_vs_no_finding(nih, tmp_path, capsys):
    rows, left, text = run(capsys, "nih-cxr14", nih, "--out", tmp_path / "o", "--finding", "Pneumonia")
    assert {Path(x["image"]).name: x["label"] for x in rows} == {
        "00000001_001.png": "No Finding", "00000002_000.png": "Pneumonia", "00000003_000.png": "Pneumonia"}
    assert sum(x["reason"] == "neither Pneumonia nor No Finding" for x in left) == 2
    assert "'task.positive_class=Pneumonia'" in text


def test_bad_input_is_one_line_and_exit_2(nih, tmp_path, capsys):
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated download")
    for args, start in [(["nih-cxr14", nih, "--finding", "Covid"], "error: --finding 'Covid'"),
                        (["medmnist", tmp_path / "cut.npz"], f"error: {tmp_path / 'cut.npz'}: not a readable .npz"),
                        (["image-folder", nih, "--patient-regex", "person(\\d+"], "error: --patient-regex"),
                        (["busi", tmp_path / "absent"], f"error: {tmp_path / 'absent'}: no such file")]:
        assert prepare([*map(str, args), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(start) and "\n" not in err, err


# --- CheXpert and MIMIC-CXR-JPG -----------------------------------------------------------------------------------

CHEXPERT_OBS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices"]


def obs(**values) -> list:
    return [values.get(o.replace(" ", "_"), "") for o in CHEXPERT_OBS]


@pytest.fixture
def chexpert(tmp_path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    train = [("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", obs(Edema="-1.0")),
             ("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", obs(Edema="-1.0")),
             ("train/patient00002/study1/view1_frontal.jpg", "Male", 87, "Frontal", "PA",
              obs(No_Finding="1.0", Support_Devices="1.0")),
             ("train/patient00003/study2/view1_frontal.jpg", "Male", 40, "Frontal", "AP", obs(Edema="1.0"))]
    valid = [("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP",
              obs(Edema="0.0", Cardiomegaly="1.0"))]
    for split, entries in (("train", train), ("valid", valid)):
        for e in entries:
            p = root / e[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(RNG.integers(0, 256, (40, 36), dtype=np.uint8)).save(p, quality=95)
        write_csv(root / f"{split}.csv", ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBS],
                  [[f"CheXpert-v1.0-small/{e[0]}", *e[1:5], *e[5]] for e in entries])
    return root


@pytest.mark.parametrize("policy, edema", [("ones", "1"), ("zeros", "0"), ("ignore", "")])
def test_chexpert_uncertain_policies(chexpert, tmp_path, capsys, policy, edema):
    rows, left, _ = run(capsys, "chexpert", chexpert, "--out", tmp_path / "o", "--uncertain", policy)
    first = next(r for r in rows if "patient00001" in r["image"])
    assert first["Edema"] == edema and first["Pneumonia"] == ""  # blank = not mentioned: unknown


def test_chexpert_views_ids_healthy_negatives_and_valid_as_test(chexpert, tmp_path, capsys):
    rows, left, text = run(capsys, "chexpert", chexpert, "--out", tmp_path / "o")
    assert len(rows) == 4 and [x["reason"] for x in left] == ["lateral view (--view frontal)"]
    p2 = next(r for r in rows if r["patient_id"] == "patient00002")
    # a 'No Finding' image is negative for the blank findings (torchxrayvision's rule), but not for devices
    assert (p2["Edema"], p2["Cardiomegaly"], p2["Support Devices"]) == ("0", "0", "1")
    assert (p2["study_id"], p2["patient_sex"], p2["patient_age"], p2["view_position"]) == (
        "patient00002/study1", "Male", "87", "PA")
    assert {r["patient_id"]: r["split"] for r in rows}["patient64541"] == "test"
    lateral, _, _ = run(capsys, "chexpert", chexpert, "--out", tmp_path / "l", "--view", "lateral")
    assert [Path(r["image"]).name for r in lateral] == ["view2_lateral.jpg"]


def test_chexpert_binary_ignore_leaves_uncertain_out_and_a_multilabel_dry_run(chexpert, tmp_path, capsys):
    rows, left, _ = run(capsys, "chexpert", chexpert, "--out", tmp_path / "b", "--finding", "Edema")
    assert {r["patient_id"]: r["label"] for r in rows} == {"patient00002": "No Finding", "patient00003": "Edema"}
    assert "Edema uncertain or unknown" in {x["reason"] for x in left}
    run(capsys, "chexpert", chexpert, "--out", tmp_path / "m", "--uncertain", "ones")
    done = dry_run(capsys, "smoke", tmp_path / "m" / "manifest.csv", tmp_path / "run", "task.type=multilabel",
                   "task.classes=[Edema, Cardiomegaly, Support Devices]")
    assert "dry run: config and data are valid; 4 samples, 2 folds, 1 test samples" in done


def test_mimic_study_labels_views_and_official_split(tmp_path, capsys):
    src = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    meta = [("d1", "10000032", "50414267", "PA"), ("d2", "10000032", "50414267", "LATERAL"),
            ("d3", "10000032", "53189527", "AP"), ("d4", "11000011", "55555555", "PA"),
            ("d5", "12000000", "56666666", "PA")]  # d5's file is missing
    for d, subj, study, _ in meta[:4]:
        png(src / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}" / f"{d}.jpg")
    write_csv(src / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id",
                                                        "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                                                        "Columns", "StudyDate", "StudyTime"],
              [[d, s, st, "CHEST (PA AND LAT)", v, 40, 36, 21800506, 213014.531] for d, s, st, v in meta], gz=True)
    write_csv(src / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *sorted(CHEXPERT_OBS)],
              [[s, st, *[{"Pneumonia": "-1.0", "Edema": "1.0"}.get(o, "") for o in sorted(CHEXPERT_OBS)]]
               for s, st in (("10000032", "50414267"), ("10000032", "53189527"), ("11000011", "55555555"))], gz=True)
    write_csv(src / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, s, "test" if d == "d4" else "validate" if d == "d3" else "train"] for d, s, st, _ in meta],
              gz=True)
    rows, left, _ = run(capsys, "mimic-cxr-jpg", src, "--out", tmp_path / "o", "--uncertain", "zeros")
    r = by_name(rows)
    assert sorted(r) == ["d1.jpg", "d3.jpg", "d4.jpg"]
    assert (r["d1.jpg"]["Edema"], r["d1.jpg"]["Pneumonia"], r["d1.jpg"]["patient_id"]) == ("1", "0", "10000032")
    assert [r[n]["split"] for n in sorted(r)] == ["train", "train", "test"]
    assert sorted(x["reason"] for x in left) == [
        "lateral view (--view frontal)", "named in mimic-cxr-2.0.0-metadata.csv.gz but the file is missing"]


# --- RSNA Pneumonia and VinDr-CXR (DICOM) -------------------------------------------------------------------------

def test_rsna_boxes_to_image_labels_header_ids_and_a_dry_run(tmp_path, capsys):
    src = tmp_path / "rsna"
    ids = [f"{i:08x}-aaaa-bbbb-cccc-{i:012x}" for i in range(8)]
    for i, pid in enumerate(ids[:7]):
        dicom(src / "stage_2_train_images" / f"{pid}.dcm", f"P{i // 2}", sex="MF"[i % 2], age=f"{30 + i:03d}Y", seed=i)
    dicom(src / "stage_2_test_images" / "ffffffff-0000.dcm", "T0", seed=99)  # unlabelled
    boxes = []
    for i, pid in enumerate(ids):
        if i % 2:  # two boxes on every other image
            boxes += [[pid, 10, 12, 8, 9, 1], [pid, 20, 12, 8, 9, 1]]
        else:
            boxes.append([pid, "", "", "", "", 0])
    write_csv(src / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], boxes)
    rows, left, _ = run(capsys, "rsna-pneumonia", src, "--out", tmp_path / "o")
    r = by_name(rows)
    assert len(rows) == 7 and [r[f"{p}.dcm"]["label"] for p in ids[:4]] == ["normal", "pneumonia"] * 2
    assert [r[f"{p}.dcm"]["patient_id"] for p in ids[:4]] == ["P0", "P0", "P1", "P1"]  # from the header
    assert (r[f"{ids[3]}.dcm"]["patient_sex"], r[f"{ids[3]}.dcm"]["patient_age"]) == ("F", "033Y")
    assert sorted(x["reason"] for x in left) == ["named in stage_2_train_labels.csv but the file is missing",
                                                  "no row in stage_2_train_labels.csv"]
    done = dry_run(capsys, "chest_xray", tmp_path / "o" / "manifest.csv", tmp_path / "run",
                   "cv.test_fraction=0", "task.classes=[normal, pneumonia]")
    assert "dry run: config and data are valid; 7 samples" in done


def test_vindr_radiologist_votes_and_test_consensus(tmp_path, capsys):
    src = tmp_path / "vindr"
    labels = ["Aortic enlargement", "Cardiomegaly", "Pleural effusion", "Pneumonia", "No finding"]
    for i, name in enumerate(("a1", "a2")):
        dicom(src / "train" / f"{name}.dicom", "", seed=i)
    dicom(src / "test" / "t1.dicom", "", seed=5)
    votes = [["a1", "R8", 1, 0, 0, 0, 0], ["a1", "R9", 0, 0, 0, 0, 1], ["a1", "R10", 0, 0, 0, 0, 1],
             ["a2", "R8", 0, 1, 0, 0, 0], ["a2", "R9", 0, 1, 1, 0, 0], ["a2", "R10", 0, 0, 0, 0, 1],
             ["gone", "R1", 0, 0, 0, 0, 1]]
    write_csv(src / "annotations" / "image_labels_train.csv", ["image_id", "rad_id", *labels], votes)
    write_csv(src / "annotations" / "image_labels_test.csv", ["image_id", *labels], [["t1", 0, 0, 1, 0, 0]])
    rows, left, text = run(capsys, "vindr-cxr", src, "--out", tmp_path / "m")
    r = by_name(rows)
    assert (r["a1.dicom"]["Aortic enlargement"], r["a2.dicom"]["Cardiomegaly"], r["a2.dicom"]["Pleural effusion"]) \
        == ("0", "1", "0")
    assert r["t1.dicom"]["split"] == "test" and r["t1.dicom"]["Pleural effusion"] == "1"
    assert [x["reason"] for x in left] == ["named in image_labels_train.csv but the file is missing"]
    assert "each image counts as its own patient" in text
    rows, _, _ = run(capsys, "vindr-cxr", src, "--out", tmp_path / "a", "--rad-vote", "any")
    r = by_name(rows)
    assert (r["a1.dicom"]["Aortic enlargement"], r["a2.dicom"]["Pleural effusion"]) == ("1", "1")


# --- ultrasound: BUS-BRA, BUSI ------------------------------------------------------------------------------------

def test_bus_bra_published_folds_metadata_and_masks(tmp_path, capsys):
    src = tmp_path / "BUSBRA"
    cases = [("bus_0001-l", "1", "benign", "Fibroadenoma", 3, "LOGIQ5", "left"),
             ("bus_0001-r", "1", "benign", "Cyst", 2, "LOGIQ5", "right"),
             ("bus_0002-l", "2", "malignant", "Invasive ductal carcinoma", 5, "ACUSON", "left"),
             ("bus_0003-s", "3", "malignant", "Invasive lobular carcinoma", 4, "iU22", "left")]
    for i, c in enumerate(cases[:3]):
        png(src / "Images" / f"{c[0]}.png", seed=i)
        png(src / "Masks" / f"mask_{c[0][4:]}.png", seed=i + 10)
    write_csv(src / "bus_data.csv", ["ID", "Case", "Pathology", "Histology", "BIRADS", "Device", "Side", "Plane"],
              [[*c, "transverse"] for c in cases])
    write_csv(src / "5-fold-cv.csv", ["ID", "Case", "kFold"], [[c[0], c[1], f] for c, f in zip(cases, (1, 1, 5, 3), strict=True)])
    rows, left, text = run(capsys, "bus-bra", src, "--out", tmp_path / "o")
    r = by_name(rows)
    assert sorted(r) == ["bus_0001-l.png", "bus_0001-r.png", "bus_0002-l.png"]  # masks are not images
    assert [r[n]["fold"] for n in sorted(r)] == ["0", "0", "4"]
    assert [r[n]["patient_id"] for n in sorted(r)] == ["1", "1", "2"]
    assert (r["bus_0002-l.png"]["birads"], r["bus_0002-l.png"]["histology"], r["bus_0002-l.png"]["device"],
            r["bus_0002-l.png"]["side"]) == ("5", "Invasive ductal carcinoma", "ACUSON", "left")
    assert [x["reason"] for x in left] == ["named in bus_data.csv but the file is missing"]
    assert "per published fold (0-based): 0 2, 4 1" in text


def test_busi_masks_left_out_and_classes_kept(tmp_path, capsys):
    src = tmp_path / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        for i in (1, 2):
            png(src / cls / f"{cls} ({i}).png", seed=i)
            png(src / cls / f"{cls} ({i})_mask.png", seed=i + 5)
    png(src / "benign" / "benign (1)_mask_1.png", seed=9)
    rows, left, text = run(capsys, "busi", src, "--out", tmp_path / "o", "--classes", "benign,malignant")
    assert sorted(by_name(rows)) == ["benign (1).png", "benign (2).png", "malignant (1).png", "malignant (2).png"]
    reasons = [x["reason"] for x in left]
    assert reasons.count("segmentation mask (*_mask*)") == 7 and reasons.count("class 'normal' not in --classes") == 2
    assert "no patient ids" in text


# --- generic layouts ----------------------------------------------------------------------------------------------

def test_image_folder_splits_and_patient_regex(tmp_path, capsys):
    src = tmp_path / "chest_xray"
    for split in ("train", "val", "test"):
        png(src / split / "NORMAL" / f"IM-{len(split):04d}-0001.jpeg")
        png(src / split / "PNEUMONIA" / f"person{len(split)}_bacteria_1.jpeg")
    png(src / "train" / "stray.jpeg")
    rows, left, _ = run(capsys, "image-folder", src, "--out", tmp_path / "o",
                        "--patient-regex", r"person(\d+)_|IM-(\d+)-")
    r = by_name(rows)
    assert len(rows) == 6 and r["person4_bacteria_1.jpeg"]["split"] == "test"
    assert r["IM-0003-0001.jpeg"]["split"] == "train" and r["IM-0003-0001.jpeg"]["patient_id"] == "0003"
    assert r["person5_bacteria_1.jpeg"]["label"] == "PNEUMONIA" and r["person5_bacteria_1.jpeg"]["patient_id"] == "5"
    assert [x["reason"] for x in left] == ["not inside a class folder"]


def test_generic_csv_columns_folds_and_what_is_left_out(tmp_path, capsys):
    src = tmp_path / "set"
    for i in range(4):
        png(src / "img" / f"{i}.png", seed=i)
    write_csv(src / "labels.csv", ["file", "dx", "mrn", "fold", "part", "scanner"],
              [["img/0.png", "benign", "A", 1, "dev", "X"], ["img/1.png", "malignant", "B", 2, "dev", "Y"],
               ["img/2.png", "", "C", 1, "dev", "X"], ["img/3.png", "benign", "D", "", "test", "Y"],
               ["img/9.png", "benign", "E", 2, "dev", "X"]])
    rows, left, _ = run(capsys, "csv", src / "labels.csv", "--out", tmp_path / "o", "--image-col", "file",
                        "--label-col", "dx", "--patient-col", "mrn", "--fold-col", "fold", "--split-col", "part",
                        "--meta-cols", "scanner")
    assert [(r["label"], r["patient_id"], r["fold"], r["split"], r["scanner"]) for r in rows] == [
        ("benign", "A", "0", "train", "X"), ("malignant", "B", "1", "train", "Y"), ("benign", "D", "", "test", "Y")]
    assert sorted(x["reason"] for x in left) == ["blank dx in row 4", "named in labels.csv row 6 but the file is missing"]
    assert prepare(["csv", str(src / "labels.csv"), "--out", str(tmp_path / "x"), "--label-col", "diagnosis"]) == 2
    assert "missing column(s) ['image', 'diagnosis']" in capsys.readouterr().err
    assert prepare(["csv", str(src / "labels.csv"), "--out", str(tmp_path / "y"), "--image-col", "file",
                    "--label-col", "dx", "--fold-col", "fold", "--meta-cols", "fold"]) == 2
    assert "metadata column(s) ['fold'] would overwrite" in capsys.readouterr().err
    assert not (tmp_path / "y" / "manifest.csv").exists()
